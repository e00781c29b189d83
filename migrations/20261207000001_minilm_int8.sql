-- The first optimised version: all-MiniLM-L6-v2 with its linear layers in
-- int8 (docs/models.md), from the same files as the f16 version. Registered,
-- not loaded: an admin loads it (and may point a label such as `canary` at
-- it).
INSERT INTO model_versions (model, version, path, settings) VALUES
    ('all-minilm-l6-v2', 'int8', 'all-minilm-l6-v2', '{"precision": "int8"}')
ON CONFLICT DO NOTHING;
