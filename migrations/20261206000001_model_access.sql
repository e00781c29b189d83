-- Which models a tenant may use: NULL is every model; otherwise the model
-- names (as GET /v1/models lists them) it may see and run.
ALTER TABLE tenants ADD COLUMN allowed_models text[];
