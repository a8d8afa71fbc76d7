//! The OpenAPI document describes the routes the router really has, with their error answers.

use reqwest::StatusCode;
use serde_json::Value;

use super::helpers::spawn_app;

#[tokio::test]
async fn the_openapi_document_lists_every_operation_and_its_problem_answers() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();

    assert_eq!(doc["openapi"], "3.1.0");
    let operations: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let mut operations: Vec<String> = operations
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    operations.sort();
    assert_eq!(
        operations,
        [
            "get /confirm",
            "get /healthz",
            "get /metrics",
            "get /readyz",
            "get /signups/{id}",
            "post /confirm",
            "post /signups"
        ]
    );
    // Every documented operation really answers on this app (no documented path the router lacks).
    for (path, status) in [
        ("/healthz", StatusCode::OK),
        ("/signups/unknown", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(app.get(path).await.status(), status);
    }

    let post = &doc["paths"]["/signups"]["post"]["responses"];
    for status in [
        "201", "202", "400", "413", "415", "422", "502", "503", "504",
    ] {
        assert!(
            post[status].is_object(),
            "POST /signups should document {status}"
        );
    }
    assert!(post["422"]["content"]["application/problem+json"].is_object());
    // The link's page and its button: a page for a browser, JSON or a problem for a client.
    for method in ["get", "post"] {
        let responses = &doc["paths"]["/confirm"][method]["responses"];
        for status in ["200", "400", "404", "410"] {
            let content = &responses[status]["content"];
            assert!(
                content["text/html"].is_object(),
                "{method} /confirm {status} is a page too"
            );
            let json = if status == "200" {
                "application/json"
            } else {
                "application/problem+json"
            };
            assert!(
                content[json].is_object(),
                "{method} /confirm {status}: {json}"
            );
        }
    }
    // Operation ids are unique (OpenAPI requires it; generated clients name methods by them).
    let mut ids: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .map(|operation| operation["operationId"].as_str().unwrap())
        .collect();
    let count = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), count, "duplicate operationId in {ids:?}");
    let body = &doc["paths"]["/confirm"]["post"]["requestBody"]["content"];
    assert!(body["application/x-www-form-urlencoded"].is_object());
    assert!(body["application/json"].is_object());
    // One answer for every address: no 409 for a confirmed one. (A 429 may come back, but for
    // a client's own rate, never for the address's.)
    assert!(post["409"].is_null(), "POST /signups documents 409");
    let problem = &doc["components"]["schemas"]["Problem"]["required"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem.as_array().unwrap().iter().any(|f| f == field),
            "Problem requires {field}"
        );
    }
}
