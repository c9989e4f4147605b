/// The cluster's tables and functions in PostgreSQL (all named `herald_*`), created when
/// missing and upgraded on start under an advisory lock, so that nodes starting together do
/// not race on `CREATE`.
///
/// **Why ids are in commit order.** `herald_append` first locks the `last_id` row of
/// `herald_meta` (`SELECT ... FOR UPDATE`) and only then gives ids, and it writes the row back
/// in the same transaction. The row lock is held until the transaction ends, so every other
/// appender, on any node, waits at that `SELECT` until the holder has committed (or rolled
/// back, which also undoes its ids). PostgreSQL makes a committed transaction visible to new
/// snapshots before it releases its locks, so when the next appender gets the row, the
/// previous batch is already visible. Hence: if a reader sees id N, it sees every id below
/// N, and "rows after the last id I delivered" never skips one. A plain sequence
/// (`nextval`) gives ids before commit, so id 7 can become visible after id 8 and a reader
/// at 8 skips 7 forever; `--cluster-unsafe-ids` (tests only) does exactly that, to prove the
/// tests catch it. The cost: appends are serialised on one row for the length of a commit
/// (one WAL flush). Each node commits everything queued in one call (group commit), so a
/// burst costs one round trip and one flush per node, not per event. An xid/snapshot horizon
/// scheme would avoid the serialisation but stalls delivery behind any long transaction.
///
/// Ids are dense: a batch takes the next ids, a rolled-back append gives its ids back, and a
/// cleared retained event takes one id (a row with flag 2, so that it is ordered with the
/// publishes around it). Only pruning removes rows.
enum PostgresSchema {
    /// Bumped when the tables change; `herald_meta.format` says what a database has.
    static let format = 1
    /// The advisory-lock key under which the schema is created (any constant; "herald" in ASCII).
    static let schemaLock: Int64 = 0x6865_7261_6C64
    /// The advisory-lock key of retention: one node at a time prunes.
    static let retentionLock: Int64 = 0x6865_7261_6C65
    /// The channel every node listens on. Payloads: `e` (events committed), `c<token>`
    /// (close the token's streams), `f<id>` (the history's floor moved).
    static let channel = "herald"

    /// Event flags.
    static let retainFlag: Int16 = 1
    static let clearFlag: Int16 = 2

    static let tables = [
        "CREATE TABLE IF NOT EXISTS herald_meta(name text PRIMARY KEY, value bigint NOT NULL)",
        """
        CREATE TABLE IF NOT EXISTS herald_events(
            id bigint PRIMARY KEY, topics text NOT NULL, client text, type text, data bytea NOT NULL,
            created bigint NOT NULL, flags smallint NOT NULL DEFAULT 0)
        """,
        """
        CREATE TABLE IF NOT EXISTS herald_retained(
            topic text PRIMARY KEY, id bigint NOT NULL, topics text NOT NULL, type text, data bytea NOT NULL,
            created bigint NOT NULL)
        """,
        "CREATE INDEX IF NOT EXISTS herald_retained_id ON herald_retained(id)",
        "CREATE TABLE IF NOT EXISTS herald_idempotency(key text PRIMARY KEY, ids bigint[] NOT NULL, newest bigint NOT NULL)",
        "CREATE INDEX IF NOT EXISTS herald_idempotency_newest ON herald_idempotency(newest)",
        "CREATE TABLE IF NOT EXISTS herald_nodes(node text PRIMARY KEY, seen timestamptz NOT NULL, started timestamptz NOT NULL)",
        """
        CREATE TABLE IF NOT EXISTS herald_presence(
            node text NOT NULL, client text NOT NULL, connections int NOT NULL, topics text NOT NULL,
            connected_at bigint NOT NULL, last_event_id bigint, queued_bytes bigint NOT NULL, PRIMARY KEY (node, client))
        """,
        "CREATE INDEX IF NOT EXISTS herald_presence_client ON herald_presence(client)",
        "CREATE SEQUENCE IF NOT EXISTS herald_unsafe_ids",
    ]

    /// Inserts the selected events of an append (`sel`: indexes into the event arrays,
    /// `sel_id`: their ids) and makes the retained ones their topics' retained events (the
    /// newest per topic wins; an older one never replaces a newer).
    static let flushFunction = """
        CREATE OR REPLACE FUNCTION herald_flush(
            sel int[], sel_id bigint[], e_topics text[], e_client text[], e_type text[], e_data bytea[], e_flags smallint[],
            now_ms bigint) RETURNS void LANGUAGE sql AS $fn$
            INSERT INTO herald_events(id, topics, client, type, data, created, flags)
            SELECT s.id, e_topics[s.i], NULLIF(e_client[s.i], ''), NULLIF(e_type[s.i], ''), e_data[s.i], now_ms, e_flags[s.i]
            FROM unnest(sel, sel_id) AS s(i, id);
            INSERT INTO herald_retained AS r (topic, id, topics, type, data, created)
            SELECT DISTINCT ON (t.topic) t.topic, s.id, e_topics[s.i], NULLIF(e_type[s.i], ''), e_data[s.i], now_ms
            FROM unnest(sel, sel_id) AS s(i, id), unnest(string_to_array(e_topics[s.i], E'\\n')) AS t(topic)
            WHERE e_flags[s.i] = 1 AND e_client[s.i] = '' AND t.topic <> ''
            ORDER BY t.topic, s.id DESC
            ON CONFLICT (topic) DO UPDATE
                SET id = excluded.id, topics = excluded.topics, type = excluded.type, data = excluded.data,
                    created = excluded.created
                WHERE r.id < excluded.id;
        $fn$
        """

    /// Appends a node's queued batches in one transaction (one round trip). Batches are
    /// given by their sizes (`b_sizes`), idempotency keys (`''`: none) and cleared topic
    /// (`''`: a publish); events by parallel arrays (`''` is NULL for client and type; topics
    /// joined by line feeds, which a topic cannot contain). Answers one row per batch: its
    /// ids, and whether they are an earlier batch's (a repeated idempotency key).
    static let appendFunction = """
        CREATE OR REPLACE FUNCTION herald_append(
            b_sizes int[], b_keys text[], b_clear text[],
            e_topics text[], e_client text[], e_type text[], e_data bytea[], e_flags smallint[], p_unsafe boolean)
        RETURNS TABLE(o_batch int, o_ids bigint[], o_repeated boolean) LANGUAGE plpgsql AS $fn$
        DECLARE
            last_id bigint;
            n int;
            offs int := 0;
            existing bigint[];
            batch_ids bigint[];
            sel int[] := '{}';
            sel_id bigint[] := '{}';
            now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
        BEGIN
            IF NOT p_unsafe THEN
                -- The lock that puts ids in commit order (see PostgresSchema in the sources).
                SELECT value INTO last_id FROM herald_meta WHERE name = 'last_id' FOR UPDATE;
            END IF;
            FOR b IN 1 .. coalesce(array_length(b_sizes, 1), 0) LOOP
                n := b_sizes[b];
                IF b_clear[b] <> '' THEN
                    -- In order with the publishes around it: what came before is written first.
                    PERFORM herald_flush(sel, sel_id, e_topics, e_client, e_type, e_data, e_flags, now_ms);
                    sel := '{}';
                    sel_id := '{}';
                    IF p_unsafe THEN last_id := nextval('herald_unsafe_ids'); ELSE last_id := last_id + 1; END IF;
                    DELETE FROM herald_retained WHERE topic = b_clear[b];
                    INSERT INTO herald_events(id, topics, data, created, flags) VALUES (last_id, b_clear[b], '', now_ms, 2);
                    o_batch := b; o_ids := ARRAY[last_id]; o_repeated := false;
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                existing := NULL;
                IF b_keys[b] <> '' THEN
                    SELECT k.ids INTO existing FROM herald_idempotency k WHERE k.key = b_keys[b];
                END IF;
                IF existing IS NOT NULL THEN
                    o_batch := b; o_ids := existing; o_repeated := true;
                    RETURN NEXT;
                    offs := offs + n;
                    CONTINUE;
                END IF;
                IF p_unsafe THEN
                    batch_ids := ARRAY(SELECT nextval('herald_unsafe_ids') FROM generate_series(1, n));
                ELSE
                    batch_ids := ARRAY(SELECT last_id + g FROM generate_series(1, n) AS g);
                    last_id := last_id + n;
                END IF;
                sel := sel || ARRAY(SELECT offs + g FROM generate_series(1, n) AS g);
                sel_id := sel_id || batch_ids;
                IF b_keys[b] <> '' THEN
                    INSERT INTO herald_idempotency(key, ids, newest) VALUES (b_keys[b], batch_ids, batch_ids[n]);
                END IF;
                o_batch := b; o_ids := batch_ids; o_repeated := false;
                RETURN NEXT;
                offs := offs + n;
            END LOOP;
            PERFORM herald_flush(sel, sel_id, e_topics, e_client, e_type, e_data, e_flags, now_ms);
            IF p_unsafe THEN
                -- The classic bug, for the tests' negative control: ids were taken above, and the
                -- transaction stays open a little, so a later id can commit first.
                PERFORM pg_sleep(random() * 0.03);
            ELSE
                UPDATE herald_meta SET value = last_id WHERE name = 'last_id';
            END IF;
            PERFORM pg_notify('herald', 'e');
            RETURN;
        END
        $fn$
        """

    /// Publishes a node's client list (replacing its previous one) and its heartbeat.
    static let presenceFunction = """
        CREATE OR REPLACE FUNCTION herald_presence_put(
            p_node text, c_client text[], c_connections int[], c_topics text[], c_connected bigint[], c_last bigint[],
            c_queued bigint[]) RETURNS void LANGUAGE plpgsql AS $fn$
        BEGIN
            INSERT INTO herald_nodes(node, seen, started) VALUES (p_node, now(), now())
            ON CONFLICT (node) DO UPDATE SET seen = now();
            IF c_client IS NOT NULL THEN
                DELETE FROM herald_presence WHERE node = p_node;
                INSERT INTO herald_presence(node, client, connections, topics, connected_at, last_event_id, queued_bytes)
                SELECT p_node, c.client, c.connections, c.topics, c.connected, NULLIF(c.last, -1), c.queued
                FROM unnest(c_client, c_connections, c_topics, c_connected, c_last, c_queued)
                    AS c(client, connections, topics, connected, last, queued);
            END IF;
        END
        $fn$
        """
}
