use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_problem, spawn_app, spawn_app_without_smtp};

#[tokio::test]
async fn healthz_says_the_process_is_up_and_readyz_checks_database_and_smtp() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["database"], "ok");
    assert_eq!(ready["smtp"], "ok");
}

#[tokio::test]
async fn readyz_is_503_while_smtp_is_down_and_200_once_it_is_back() {
    let mut app = spawn_app_without_smtp(|_| {}).await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let problem = assert_problem(app.get("/readyz").await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(problem["detail"].as_str().unwrap().contains("SMTP"));

    app.start_smtp().await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
}
