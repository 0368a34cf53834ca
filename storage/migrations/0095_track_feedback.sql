-- Materialization feedback (the server's awareness state in each track room, see ARCHITECTURE.md):
-- what became of a track document's points, kept beside its progress and written in the same
-- transaction as the batch, so every node publishes the same totals. `rejected`: reason -> count.
ALTER TABLE track_progress
    ADD COLUMN stored bigint NOT NULL DEFAULT 0 CHECK (stored >= 0),
    ADD COLUMN rejected jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(rejected) = 'object');
