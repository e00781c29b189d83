//! `maas-api`: serve the HTTP API, apply migrations, or mint an admin token.

use clap::{Parser, Subcommand};
use maas_api::{ApiSettings, Application};

#[derive(Parser)]
#[command(
    name = "maas-api",
    version,
    about = "Tenant and admin HTTP API of the model-serving platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: ApiSettings,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Print an admin JWT signed with MAAS_JWT_SECRET.
    AdminToken {
        /// Who the token is for (recorded in the audit log).
        #[arg(long, default_value = "admin")]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    maas_core::telemetry::init("maas-api", cli.settings.common.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let app = Application::build(cli.settings).await?;
            println!("maas-api listening on port {}", app.port());
            tracing::info!(port = app.port(), "maas-api listening");
            let result = app.run_until_stopped().await;
            // Spans still buffered go out before the process ends.
            maas_core::telemetry::shutdown();
            result
        }
        Command::Migrate => {
            let db = maas_store::connect(&cli.settings.common.database_url, 2).await?;
            maas_store::migrate(&db).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::AdminToken { sub, ttl_secs } => {
            let key = cli.settings.jwt_key().map_err(anyhow::Error::msg)?;
            println!(
                "{}",
                maas_api::auth::mint_admin_token(&key, &sub, ttl_secs)
                    .map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
    }
}
