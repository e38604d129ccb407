#!/usr/bin/env bash
# `storage verify` on one 1 GiB stored object (random bytes, local storage): unbounded, beside
# `sha256sum` + `md5sum` of the same file in the same run (page cache warm, three rounds
# alternated), then with --rate 100 and --rate 25 (MiB/s; 10.24 s and 40.96 s by the rate),
# with the peak RSS of each run. Needs a release build (`cargo build --release -p
# video-import-api`), the machine's PostgreSQL and GNU time; removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/video-import-api
DB=vit_verify_bench_$RANDOM$RANDOM
WORK=$(mktemp -d)
ROOT=$WORK/videos
export VIDEO_IMPORT__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$DB
export VIDEO_IMPORT__STORAGE__ROOT=$ROOT
export VIDEO_IMPORT__LOG__FILTER=warn
cleanup() { dropdb -h 127.0.0.1 -U postgres --if-exists "$DB"; rm -rf "$WORK"; }
trap cleanup EXIT
createdb -h 127.0.0.1 -U postgres "$DB"
"$BIN" migrate
"$BIN" project create bench >/dev/null
mkdir -p "$ROOT/1"
FILE=$ROOT/1/big.bin
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$FILE"
SIZE=$(stat -c %s "$FILE")
SHA=$(sha256sum "$FILE" | cut -d' ' -f1)
MD5=$(md5sum "$FILE" | cut -d' ' -f1)
psql -q -h 127.0.0.1 -U postgres -d "$DB" -c "INSERT INTO media_entries (id, project_id,
    system_name, external_id, file_name, metadata, asset_key, asset_size, mime_type, sha256,
    md5, original_url)
  SELECT 'verifybench1', id, 's', 'big', 'big', '{}', '1/big.bin', $SIZE, 'video/mp4',
    '$SHA', '$MD5', 'http://archive.example/big' FROM projects"
for round in 1 2 3; do
  /usr/bin/time -f "round $round: sha256sum + md5sum  %e s" \
    sh -c "sha256sum '$FILE' >/dev/null && md5sum '$FILE' >/dev/null"
  /usr/bin/time -f "round $round: storage verify      %e s, peak RSS %M KiB" \
    "$BIN" storage verify >/dev/null
done
for rate in 100 25; do
  /usr/bin/time -f "storage verify --rate $rate: %e s, peak RSS %M KiB" \
    "$BIN" storage verify --rate "$rate" >/dev/null
done
