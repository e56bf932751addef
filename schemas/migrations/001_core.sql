-- ingestd core tables. ingestd owns schema ingestd; schema oms holds
-- reference versions of the OMS's own tables for the demo and the tests
-- (in production the OMS owns them and ingestd only reads them).

CREATE SCHEMA IF NOT EXISTS ingestd;
CREATE SCHEMA IF NOT EXISTS oms;

-- Device registry: one row per canonical device, updated once per flush.
CREATE TABLE ingestd.devices (
    id               text PRIMARY KEY,
    status           text NOT NULL DEFAULT 'online'
                     CHECK (status IN ('online', 'offline')),
    first_seen       timestamptz NOT NULL DEFAULT now(),
    last_seen        timestamptz NOT NULL,          -- last heartbeat: any message
    firmware         text,                          -- as the payload reported it
    transports       text[] NOT NULL DEFAULT '{}',  -- mqtt, http, ... ever used
    formats          text[] NOT NULL DEFAULT '{}',  -- json, senml, ... ever used
    gateway_id       text,                          -- the gateway it sits behind
    cert_fingerprint text,
    metadata         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX devices_online_last_seen ON ingestd.devices (last_seen)
    WHERE status = 'online';

-- (namespace, external id) -> canonical device, e.g. ('lorawan', DevEUI).
CREATE TABLE ingestd.device_aliases (
    namespace   text NOT NULL,
    external_id text NOT NULL,
    device_id   text NOT NULL,
    PRIMARY KEY (namespace, external_id)
);

-- Readings, partitioned by measurement time. The default partition takes
-- any time no monthly partition covers, so an odd timestamp never aborts a
-- COPY. Identity: (device_id, metric, ts); the first write wins.
CREATE SEQUENCE ingestd.readings_seq;
CREATE TABLE ingestd.readings (
    seq         bigint NOT NULL DEFAULT nextval('ingestd.readings_seq'),
    device_id   text NOT NULL,
    metric      text NOT NULL,
    ts          timestamptz NOT NULL,   -- measurement time (receipt if none sent)
    value_num   double precision,       -- exactly one value_* column is set
    value_text  text,
    value_bool  boolean,
    value_bytes bytea,
    value_json  jsonb,
    unit        text,
    received_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    transport   text NOT NULL,
    format      text NOT NULL,
    order_id    text,                   -- stamped at ingest from a binding
    PRIMARY KEY (device_id, metric, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE ingestd.readings_default PARTITION OF ingestd.readings DEFAULT;

-- Messages, or parts of them, that could not be used: raw bytes and why.
CREATE TABLE ingestd.dead_letters (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    transport   text NOT NULL,
    source      text NOT NULL,          -- topic, path, peer address
    device_id   text,
    reason      text NOT NULL,
    details     jsonb,                  -- [{"path": ..., "reason": ...}]
    payload     bytea NOT NULL
);
CREATE INDEX dead_letters_received_at ON ingestd.dead_letters (received_at);

-- OMS reference tables (owned by the OMS in production).
CREATE TABLE oms.orders (
    id         text PRIMARY KEY,
    kind       text NOT NULL DEFAULT 'shipment',
    status     text NOT NULL DEFAULT 'open',
    product    text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE oms.device_bindings (
    device_id  text NOT NULL,
    order_id   text NOT NULL REFERENCES oms.orders (id),
    valid_from timestamptz NOT NULL DEFAULT '-infinity',
    valid_to   timestamptz NOT NULL DEFAULT 'infinity',
    PRIMARY KEY (device_id, order_id, valid_from)
);

-- Threshold rules: a reading of `metric` on a bound device that satisfies
-- `op threshold` opens a breach; the first reading back on the safe side
-- closes it. Both are order updates of kind `kind`.
CREATE TABLE ingestd.rules (
    id        text PRIMARY KEY,
    metric    text NOT NULL,
    op        text NOT NULL CHECK (op IN ('>', '>=', '<', '<=')),
    threshold double precision NOT NULL,
    kind      text NOT NULL,
    enabled   boolean NOT NULL DEFAULT true
);

-- The outbox the OMS reads, by id. effect_key makes every effect happen
-- once however often its readings are delivered.
CREATE TABLE ingestd.order_updates (
    id          bigserial PRIMARY KEY,
    order_id    text NOT NULL,
    kind        text NOT NULL,
    payload     jsonb NOT NULL,
    effect_key  text NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL,   -- when the readings say it happened
    detected_at timestamptz NOT NULL,   -- when ingestd found it
    written_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX order_updates_order ON ingestd.order_updates (order_id, id);
