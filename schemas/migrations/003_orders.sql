-- Readings into the order lifecycle: bindings of three kinds, rules of six
-- kinds, and the effect tables the OMS reads next to the outbox.
-- schemas/oms-tables.md describes every OMS-facing table for OMS developers.

-- Bindings (OMS reference table): a tracker to a shipment or order line, a
-- shelf scale to a SKU at a location, a machine to a production order. A
-- stock binding needs no order, so order_id becomes optional and the key a
-- surrogate id.
ALTER TABLE oms.device_bindings DROP CONSTRAINT device_bindings_pkey;
ALTER TABLE oms.device_bindings ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE oms.device_bindings
    ADD COLUMN id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ADD COLUMN kind        text NOT NULL DEFAULT 'shipment'
                           CHECK (kind IN ('shipment', 'stock', 'production')),
    ADD COLUMN order_line  text,              -- shipment: the line it travels with
    ADD COLUMN sku         text,              -- stock: the item on the shelf
    ADD COLUMN location    text,              -- stock: where the shelf is
    ADD COLUMN unit_weight double precision,  -- stock: kg per unit
    ADD CONSTRAINT device_bindings_order CHECK (kind = 'stock' OR order_id IS NOT NULL),
    ADD CONSTRAINT device_bindings_stock CHECK (
        kind <> 'stock'
        OR (sku IS NOT NULL AND location IS NOT NULL AND unit_weight > 0));
CREATE INDEX device_bindings_device ON oms.device_bindings (device_id, valid_from);

-- What the OMS expects on each shelf (OMS reference table), for the
-- reconciliation view below.
CREATE TABLE oms.expected_stock (
    sku            text NOT NULL,
    location       text NOT NULL,
    expected_units integer NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, location)
);

-- Rules: `rule_type` says how readings are judged, `action` what a breach
-- does, `params` holds the type's settings (documented in
-- schemas/oms-tables.md), `product` limits a rule to orders of one product.
-- op and threshold stay the judged limit of threshold and rate rules.
ALTER TABLE ingestd.rules ALTER COLUMN op DROP NOT NULL;
ALTER TABLE ingestd.rules ALTER COLUMN threshold DROP NOT NULL;
ALTER TABLE ingestd.rules
    ADD COLUMN rule_type text NOT NULL DEFAULT 'threshold' CHECK (rule_type IN (
        'threshold', 'rate', 'excursion', 'geofence', 'count', 'state', 'stock')),
    ADD COLUMN action    text NOT NULL DEFAULT 'order_update' CHECK (action IN (
        'order_update', 'shipment_condition', 'service_ticket', 'reroute',
        'downtime', 'stock')),
    ADD COLUMN params    jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN product   text,
    ADD CONSTRAINT rules_limit CHECK (
        rule_type NOT IN ('threshold', 'rate')
        OR (op IS NOT NULL AND threshold IS NOT NULL));

-- Service tickets and reroute requests: one row per incident, opened when a
-- rule's breach opens and closed when readings return to normal. At most
-- one open incident per rule, order and device, enforced here.
CREATE TABLE ingestd.service_tickets (
    id                 bigserial PRIMARY KEY,
    effect_key         text NOT NULL UNIQUE,
    kind               text NOT NULL CHECK (kind IN ('service', 'reroute')),
    order_id           text NOT NULL,
    device_id          text NOT NULL,
    rule_id            text NOT NULL,
    reason             text NOT NULL,
    opened_at          timestamptz NOT NULL,   -- when the readings say it began
    detected_at        timestamptz NOT NULL,   -- when ingestd found it
    closed_at          timestamptz,            -- first reading back to normal
    closed_detected_at timestamptz,
    peak               double precision,       -- worst judged value while open
    written_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX service_tickets_one_open
    ON ingestd.service_tickets (rule_id, order_id, device_id) WHERE closed_at IS NULL;

-- Downtime of a machine against the production order running on it.
CREATE TABLE ingestd.downtime (
    id               bigserial PRIMARY KEY,
    effect_key       text NOT NULL UNIQUE,
    order_id         text NOT NULL,
    device_id        text NOT NULL,
    rule_id          text NOT NULL,
    cause            text NOT NULL,          -- machine state, or the rule's kind
    started_at       timestamptz NOT NULL,
    detected_at      timestamptz NOT NULL,
    ended_at         timestamptz,
    end_detected_at  timestamptz,
    written_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX downtime_one_open
    ON ingestd.downtime (rule_id, order_id, device_id) WHERE ended_at IS NULL;

-- Stock levels measured by shelf scales: one row per settled change.
CREATE TABLE ingestd.stock_levels (
    id           bigserial PRIMARY KEY,
    effect_key   text NOT NULL UNIQUE,
    sku          text NOT NULL,
    location     text NOT NULL,
    device_id    text NOT NULL,
    units        integer NOT NULL,
    weight_kg    double precision NOT NULL,
    measured_at  timestamptz NOT NULL,    -- when the new weight settled
    detected_at  timestamptz NOT NULL,
    written_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX stock_levels_place ON ingestd.stock_levels (sku, location, measured_at);

-- The newest level per shelf scale, summed per SKU and location.
CREATE VIEW ingestd.stock_current AS
SELECT sku, location, sum(units)::integer AS units, max(measured_at) AS measured_at
FROM (
    SELECT DISTINCT ON (sku, location, device_id) sku, location, units, measured_at
    FROM ingestd.stock_levels
    ORDER BY sku, location, device_id, measured_at DESC, id DESC
) newest
GROUP BY sku, location;

-- Measured against expected stock; a row where either side is missing too.
CREATE VIEW ingestd.stock_reconciliation AS
SELECT coalesce(e.sku, c.sku) AS sku,
       coalesce(e.location, c.location) AS location,
       e.expected_units,
       c.units AS measured_units,
       c.units - e.expected_units AS difference,
       c.measured_at,
       e.updated_at AS expected_updated_at
FROM oms.expected_stock e
FULL JOIN ingestd.stock_current c ON c.sku = e.sku AND c.location = e.location;

-- The outbox references the effect tables; stock updates carry an order
-- only when the shelf's binding names one.
ALTER TABLE ingestd.order_updates ALTER COLUMN order_id DROP NOT NULL;
ALTER TABLE ingestd.order_updates
    ADD COLUMN ticket_id   bigint REFERENCES ingestd.service_tickets (id),
    ADD COLUMN stock_id    bigint REFERENCES ingestd.stock_levels (id),
    ADD COLUMN downtime_id bigint REFERENCES ingestd.downtime (id);

-- Catch-up by ingest sequence: the index, and the dispatcher's watermark
-- (every reading with seq <= watermark has been evaluated).
CREATE INDEX readings_by_seq ON ingestd.readings (seq);  -- not "readings_seq": the sequence has that name
CREATE TABLE ingestd.dispatch_watermark (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq        bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
