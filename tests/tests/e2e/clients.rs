//! Real clients against a running stack: what a Livingdocs integration reads back with
//! Livingdocs' own node SDK (`tests/clients/`, installed with `npm ci --prefix tests/clients`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{batch, unique, Options, Stack};

/// The folder with the clients' `package.json` and their `node_modules`; panics when the
/// Livingdocs SDK is not installed there.
fn clients_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    // Failing, not skipping: a test that silently did nothing would look like a pass.
    assert!(
        dir.join("node_modules/@livingdocs/node-sdk/package.json")
            .exists(),
        "the Livingdocs node SDK is not installed in {}: run `npm ci --prefix tests/clients` \
         (deploy/services.sh does)",
        dir.display()
    );
    dir
}

/// Runs `livingdocs-sdk.mjs` of `dir` with `vars`; returns what it printed, as JSON.
async fn run_sdk_script(dir: &Path, vars: &[(&str, &str)]) -> Value {
    let run = tokio::process::Command::new("node")
        .arg(dir.join("livingdocs-sdk.mjs"))
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // The SDK's own request timeout is 10 s a call: a hang beyond this is the script's.
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the SDK script finished within 60 s")
        .unwrap_or_else(|e| panic!("cannot run node (deploy/services.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "livingdocs-sdk.mjs exited with {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("the SDK script printed no JSON ({e}): {stdout}\n{stderr}"))
}

/// `value` with every number as a float, as JavaScript reads JSON: it has one number type,
/// so the API's `1.0` comes back from node as `1`, the same number.
fn as_javascript(value: &Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        Value::Array(items) => Value::Array(items.iter().map(as_javascript).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), as_javascript(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[tokio::test]
async fn livingdocs_node_sdk_reads_imported_entries() {
    // Before the stack starts: a missing install is said at once.
    let clients = clients_dir();
    // No webhook in this test: no notifier.
    let stack = Stack::start(Options {
        notifier: false,
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("sdk").await;
    let system_name = "livingdocs-archive";
    let external_id = unique("sdk-video");
    let metadata = json!({"title": "read by the node SDK", "credit": "LC"});
    let job = stack
        .import(
            &project.token,
            &batch(system_name).video_with(
                videos.url("/videos/sample.mp4"),
                &external_id,
                "clip.mp4",
                metadata.clone(),
            ),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "success", "{status}");
    let media_id = status["videos"][0]["video"]["mediaId"]
        .as_str()
        .unwrap_or_else(|| panic!("an imported video has a mediaId: {status}"))
        .to_string();
    // What the API answers directly: the SDK must hand back the same.
    let (code, direct) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    assert_eq!(code, 200, "{direct}");

    let read = run_sdk_script(
        &clients,
        &[
            ("LI_URL", &stack.api_url),
            ("LI_TOKEN", &project.token),
            ("LI_MEDIA_ID", &media_id),
            ("LI_SYSTEM_NAME", system_name),
            ("LI_EXTERNAL_ID", &external_id),
        ],
    )
    .await;

    // getMedia({id}): the entry, as a Livingdocs user checks it.
    let by_id = &read["byId"];
    assert_eq!(by_id["id"], media_id, "{read}");
    assert_eq!(by_id["mediaType"], "video");
    assert_eq!(by_id["systemName"], system_name);
    assert_eq!(by_id["externalId"], external_id);
    assert_eq!(by_id["fileName"], "clip.mp4");
    assert_eq!(by_id["metadata"], metadata);
    let asset = &by_id["asset"];
    let bytes = fixture("sample.mp4");
    assert!(asset["key"].is_string(), "asset.key: {asset}");
    assert_eq!(asset["key"], direct["asset"]["key"]);
    assert_eq!(asset["size"], bytes.len(), "asset.size: {asset}");
    assert_eq!(asset["size"], direct["asset"]["size"]);
    assert_eq!(asset["mimeType"], "video/mp4", "asset.mimeType: {asset}");
    assert_eq!(asset["mimeType"], direct["asset"]["mimeType"]);
    assert_eq!(asset["sha256"], sha256(&bytes));
    // Nothing lost or changed on the way through the SDK.
    assert_eq!(
        as_javascript(by_id),
        as_javascript(&direct),
        "the SDK's entry is the API's"
    );

    // getMedia({systemName, externalId}): the SDK returns the API's body as it is (it
    // parses the JSON and nothing more), and the API answers a list of zero or one entries.
    let found = read["byExternalId"]
        .as_array()
        .unwrap_or_else(|| panic!("byExternalId is the API's list: {read}"));
    assert_eq!(
        found.len(),
        1,
        "one entry for (systemName, externalId): {read}"
    );
    assert_eq!(
        as_javascript(&found[0]),
        as_javascript(&direct),
        "the same entry by id and by externalId"
    );

    // asset.url, a path on the API's address without api.public_url: a client fetches the
    // stored video through it, and gets the source's bytes.
    let url = asset["url"]
        .as_str()
        .unwrap_or_else(|| panic!("asset.url is a string: {asset}"));
    assert_eq!(url, format!("/api/v1/mediaLibrary/{media_id}/asset"));
    assert_eq!(
        asset["filename"], "clip.mp4",
        "asset.filename is the fileName"
    );
    let stored = stack
        .http
        .get(format!("{}{url}", stack.api_url))
        .bearer_auth(&project.token)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(sha256(&stored.bytes().await.unwrap()), sha256(&bytes));
    stack.finish().await;
}
