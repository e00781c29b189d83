//! The OpenAPI document, generated from the handlers' annotations and served
//! at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    admin, batches, chat, embeddings, files, health, jobs, models, registry, usage, webhooks,
};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("maas_sk_...")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let _ = ApiKey::Header(ApiKeyValue::new("Authorization"));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "maas", description = "Multi-tenant model serving: tenant API and admin API"),
    paths(
        health::healthz, health::readyz,
        jobs::create_job, jobs::get_job, jobs::list_jobs, jobs::cancel_job, jobs::queue_stats,
        models::list_models, models::get_model, usage::tenant_usage, embeddings::create_embeddings, chat::chat_completions, chat::completions,
        admin::create_tenant, admin::list_tenants, admin::get_tenant, admin::update_tenant, admin::delete_tenant,
        admin::create_key, admin::list_keys, admin::revoke_key, admin::set_key_limits, admin::put_quota, admin::get_quota, admin::get_usage, admin::put_tenant_models,
        batches::create, batches::get, batches::list, batches::cancel, batches::partial_output, admin::list_tenant_batches, admin::cancel_tenant_batch,
        files::upload, files::list, files::get, files::content, files::delete, admin::put_file_limits, admin::get_file_limits,
        registry::index, registry::register, registry::load, registry::unload, registry::set_label,
        webhooks::tenant_create, webhooks::tenant_list, webhooks::tenant_get, webhooks::tenant_update, webhooks::tenant_delete, webhooks::tenant_rotate, webhooks::tenant_test, webhooks::tenant_deliveries,
        webhooks::admin_create, webhooks::admin_list, webhooks::admin_get, webhooks::admin_update, webhooks::admin_delete, webhooks::admin_rotate, webhooks::admin_test, webhooks::admin_deliveries,
    ),
    components(schemas(
        jobs::CreateJob, jobs::JobView, maas_store::queue::Standing, maas_store::queue::QueueTime, embeddings::EmbeddingsRequest, embeddings::EmbeddingsResponse, chat::GenerationRequest, jobs::JobList, crate::error::ErrorBody, crate::error::ErrorObject,
        admin::CreateTenant, admin::UpdateTenant, admin::TenantModels, registry::RegisterVersion, registry::LoadVersion, registry::SetLabel, admin::CreateKey, maas_store::keys::KeyLimits, maas_store::quotas::Quota, files::FileObject, files::FileList, batches::CreateBatch, maas_store::files::FileLimits,
        webhooks::CreateEndpoint, webhooks::UpdateEndpoint, webhooks::RotateSecret, webhooks::TestEndpoint,
        maas_core::JobStatus, maas_core::JobMode, maas_core::Lane,
    )),
    modifiers(&Security),
)]
pub struct ApiDoc;

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
