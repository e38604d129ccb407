// Reads one media-library entry with Livingdocs' own node SDK (@livingdocs/node-sdk), as a
// Livingdocs integration would, by id and by (systemName, externalId). Run by the e2e test
// `clients::livingdocs_node_sdk_reads_imported_entries` against a running stack.
//
// Environment: LI_URL (the API's base URL), LI_TOKEN (a token with public-api:read),
// LI_MEDIA_ID, LI_SYSTEM_NAME, LI_EXTERNAL_ID.
// Prints one JSON object {"byId": ..., "byExternalId": ...} on stdout: what the SDK's two
// getMedia calls returned, unchanged. On failure the error goes to stderr, exit code 1
// (2 for a missing variable).
//
// The SDK is CommonJS; Node imports its module.exports as the default export.
import liSDK from '@livingdocs/node-sdk'

const names = ['LI_URL', 'LI_TOKEN', 'LI_MEDIA_ID', 'LI_SYSTEM_NAME', 'LI_EXTERNAL_ID']
const missing = names.filter((name) => !process.env[name])
if (missing.length > 0) {
  console.error(`livingdocs-sdk.mjs: set ${missing.join(', ')}`)
  process.exit(2)
}
const env = process.env

try {
  // As the SDK's README constructs it: the base URL (the SDK adds /api/v1/...) and a token.
  const liClient = new liSDK.Client({url: env.LI_URL, accessToken: env.LI_TOKEN})
  // GET /api/v1/mediaLibrary/{id}
  const byId = await liClient.getMedia({id: env.LI_MEDIA_ID})
  // GET /api/v1/mediaLibrary?systemName=..&externalId=.. (the SDK builds the query with qs)
  const byExternalId = await liClient.getMedia({
    systemName: env.LI_SYSTEM_NAME,
    externalId: env.LI_EXTERNAL_ID
  })
  // The SDK returns the parsed body whatever the HTTP status (it never checks it), so an
  // error answer is printed like an entry: the test's assertions show it.
  process.stdout.write(JSON.stringify({byId, byExternalId}) + '\n')
} catch (error) {
  console.error(`livingdocs-sdk.mjs: ${error && error.stack ? error.stack : error}`)
  // exitCode rather than exit(): lets stderr drain.
  process.exitCode = 1
}
