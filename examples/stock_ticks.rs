//! A Rust backend that embeds Halley as a library: it serves the Bayeux endpoint and
//! publishes stock ticks on `/stocks/<SYMBOL>`, and answers `/service/quote` calls.
//!
//! Run it with `cargo run --release --example stock_ticks`, then subscribe from any
//! CometD client to `http://127.0.0.1:8080/cometd`, channel `/stocks/*`.

use std::time::Duration;

use halley::broker::{ServiceCall, ServiceReply};
use halley::config::Config;
use serde_json::json;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config {
        listen: "127.0.0.1:8080".parse()?,
        ..Config::default()
    };
    let listener = TcpListener::bind(config.listen).await?;
    println!(
        "stock ticks on http://{}{} channel /stocks/*",
        listener.local_addr()?,
        config.path
    );
    let broker = halley::server::broker(config)?;

    // Request/response over a service channel: CometD JS `remoteCall('quote', {symbol})`.
    broker.register_service("/service/quote", |call: &ServiceCall<'_>| {
        let symbol = call.data_value()["symbol"]
            .as_str()
            .unwrap_or("ACME")
            .to_string();
        ServiceReply::Answer(json!({"symbol": symbol, "price": 100.0}))
    })?;

    let publisher = broker.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let mut price: f64 = 100.0;
        loop {
            ticker.tick().await;
            price = (price + rand::random::<f64>() - 0.5).max(1.0);
            let tick = json!({"symbol": "ACME", "price": (price * 100.0).round() / 100.0});
            match publisher.publish("/stocks/ACME", &tick) {
                Ok(receivers) => println!("tick {tick} -> {receivers} sessions"),
                Err(error) => eprintln!("tick not published: {error}"),
            }
        }
    });

    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    halley::server::serve(listener, broker, shutdown).await?;
    Ok(())
}
