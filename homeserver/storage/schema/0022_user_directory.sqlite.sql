-- The user directory (POST /user_directory/search): every local user and every remote
-- user joined to a room this server is in, with the profile to show and to search.
-- Local users' entries follow their global profile; remote users' follow their member
-- events.  Who may see whom is decided at search time from room_memberships.
CREATE TABLE user_directory (
    user_id TEXT PRIMARY KEY,
    is_local SMALLINT NOT NULL,
    display_name TEXT,
    avatar_url TEXT,
    -- the folded display name (else localpart), for a stable order among equal matches
    sort_name TEXT NOT NULL
);

-- The words of each entry (localpart, server name, display name), lower-cased and
-- without accents; searched by prefix.  (The PostgreSQL variant compares them bytewise.)
CREATE TABLE user_directory_search (
    token TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (token, user_id)
);
CREATE INDEX user_directory_search_user ON user_directory_search (user_id);

-- The rooms this server is joined to (at least one local member), and whether they are
-- public (join rule public or history world_readable): their members are visible to all.
CREATE TABLE user_directory_rooms (
    room_id TEXT PRIMARY KEY,
    is_public SMALLINT NOT NULL
);

-- 0 until the directory has been built from the existing users and rooms (done once, at
-- first use, for databases that predate it); a new database has nothing to build.
CREATE TABLE user_directory_state (
    populated SMALLINT NOT NULL
);
INSERT INTO user_directory_state (populated)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM users) OR EXISTS (SELECT 1 FROM room_memberships) THEN 0 ELSE 1 END;
