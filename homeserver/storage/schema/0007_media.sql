-- The media repository: metadata of local uploads, of media cached from other servers,
-- and of their thumbnails.  The bytes live in the media store (by ID, never by name).

-- media_length is NULL while a media ID made by POST /_matrix/media/v1/create waits for
-- its upload.  authenticated: served only by the /_matrix/client/v1/media endpoints.
-- image_width/height: the (EXIF-rotated) size of an image we can thumbnail, else NULL.
CREATE TABLE local_media (
    media_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    media_type TEXT,
    media_length BIGINT,
    upload_name TEXT,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT,
    sha256 TEXT,
    quarantined_by TEXT,
    safe_from_quarantine SMALLINT NOT NULL DEFAULT 0,
    authenticated SMALLINT NOT NULL DEFAULT 0,
    image_width INTEGER,
    image_height INTEGER
);
CREATE INDEX local_media_by_user ON local_media (user_id, created_ts);
CREATE INDEX local_media_by_access ON local_media (last_access_ts);
CREATE INDEX local_media_by_sha256 ON local_media (sha256);

CREATE TABLE local_media_thumbnails (
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (media_id, width, height, method, media_type)
);

-- filesystem_id names the file in the store: a remote media ID never becomes a path.
CREATE TABLE remote_media_cache (
    media_origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    filesystem_id TEXT NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    upload_name TEXT,
    created_ts BIGINT NOT NULL,
    last_access_ts BIGINT NOT NULL,
    sha256 TEXT,
    quarantined_by TEXT,
    authenticated SMALLINT NOT NULL DEFAULT 0,
    image_width INTEGER,
    image_height INTEGER,
    PRIMARY KEY (media_origin, media_id)
);
CREATE INDEX remote_media_cache_by_access ON remote_media_cache (last_access_ts);
CREATE INDEX remote_media_cache_by_sha256 ON remote_media_cache (sha256);

CREATE TABLE remote_media_thumbnails (
    media_origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    media_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    PRIMARY KEY (media_origin, media_id, width, height, method, media_type)
);
