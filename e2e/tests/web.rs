//! Web actions through real Envoy, without a key: the HTTP request becomes the action's parameters
//! and its result the HTTP response (`.http`, `.json`, `.text` with projections), exported actions
//! only, final parameters protected, `raw-http`, `require-whisk-auth` (secret or key), CORS
//! preflight, application errors as responses, and the activation recorded in the owner's namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::client::Client;
use e2e::{Artifacts, GUEST_KEY, Options, Platform};
use serde_json::{Value, json};

const ECHO_JS: &str = "function main(p) { return p; }";
const HELLO_JS: &str = "function main(p) { return {body: '<h1>hello ' + (p.name || 'you') + '</h1>'}; }";
const REDIRECT_JS: &str =
    "function main() { return {statusCode: 302, headers: {location: 'http://example.org/'}}; }";
const TEAPOT_JS: &str = "function main() { return {error: {statusCode: 418, body: 'teapot'}}; }";

async fn create(client: &Client, path: &str, code: &str, annotations: Value, parameters: Value) {
    let action = json!({
        "exec": {"kind": "nodejs:20", "code": code},
        "annotations": annotations,
        "parameters": parameters,
    });
    let reply =
        client.put(&format!("/api/v1/namespaces/_/actions/{path}?overwrite=true"), &action).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn exported() -> Value {
    json!([{"key": "web-export", "value": true}, {"key": "final", "value": true}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_actions_answer_http_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let platform = Platform::start(
        Options::for_test(dir.path(), "envoy-web").unwrap(),
        Artifacts::from_workspace().unwrap(),
    )
    .unwrap();
    let client = Client::new(&platform.api_host(), GUEST_KEY);
    let web = |path: &str| format!("{}/api/v1/web/guest/{path}", platform.api_host());
    let anonymous = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    create(&client, "hello", HELLO_JS, exported(), json!([])).await;
    create(&client, "echo", ECHO_JS, exported(), json!([{"key": "fixed", "value": "kept"}])).await;
    create(&client, "private", ECHO_JS, json!([]), json!([])).await;
    create(&client, "redirect", REDIRECT_JS, exported(), json!([])).await;
    create(&client, "teapot", TEAPOT_JS, exported(), json!([])).await;
    let raw = json!([{"key": "web-export", "value": true}, {"key": "raw-http", "value": true}]);
    create(&client, "raw", ECHO_JS, raw, json!([])).await;
    let secret =
        json!([{"key": "web-export", "value": true}, {"key": "require-whisk-auth", "value": "s3cret"}]);
    create(&client, "secret", ECHO_JS, secret, json!([])).await;
    let keyed = json!([{"key": "web-export", "value": true}, {"key": "require-whisk-auth", "value": true}]);
    create(&client, "keyed", ECHO_JS, keyed, json!([])).await;
    assert_eq!(client.put("/api/v1/namespaces/_/packages/demo", &json!({})).await.unwrap().status, 200);
    create(&client, "demo/hi", HELLO_JS, exported(), json!([])).await;

    // `.http` (the default): the result is the response; the activation is the owner's.
    let page = anonymous.get(web("default/hello?name=Jane")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(page.headers()["access-control-allow-origin"], "*");
    let id = page.headers()["x-openwhisk-activation-id"].to_str().unwrap().to_owned();
    assert_eq!(page.text().await.unwrap(), "<h1>hello Jane</h1>");
    let record = client.wait_for_activation(&id, std::time::Duration::from_secs(10)).await.unwrap();
    assert_eq!(record.status, 200, "{}", record.body);
    assert_eq!(
        (record.body["name"].as_str(), record.body["subject"].as_str()),
        (Some("hello"), Some("guest"))
    );
    let packaged = anonymous.get(web("demo/hi.http")).send().await.unwrap();
    assert_eq!(
        (packaged.status().as_u16(), packaged.text().await.unwrap()),
        (200, "<h1>hello you</h1>".into())
    );

    // `.json` and `.text` with projections; the HTTP context and the query and body as parameters.
    let echoed: Value =
        anonymous.get(web("default/echo.json?q=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!((echoed["q"].as_str(), echoed["fixed"].as_str()), (Some("1"), Some("kept")));
    assert_eq!((echoed["__ow_method"].as_str(), echoed["__ow_path"].as_str()), (Some("get"), Some("")));
    let headers: Value =
        anonymous.get(web("default/echo.json/__ow_headers")).send().await.unwrap().json().await.unwrap();
    assert!(headers["host"].is_string(), "{headers}");
    let path = anonymous.get(web("default/echo.text/__ow_path")).send().await.unwrap();
    assert_eq!(path.text().await.unwrap(), "/__ow_path", "what follows the action is __ow_path");
    let posted: Value = anonymous
        .post(web("default/echo.json?q=1"))
        .json(&json!({"q": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((posted["q"].as_i64(), posted["__ow_method"].as_str()), (Some(2), Some("post")));
    let form = anonymous.put(web("default/echo.text/who")).form(&[("who", "Ann Lee")]).send().await.unwrap();
    assert_eq!((form.status().as_u16(), form.text().await.unwrap()), (200, "Ann Lee".into()));
    let projected = anonymous.get(web("default/echo.json/__ow_method")).send().await.unwrap();
    assert_eq!(projected.json::<Value>().await.unwrap(), json!("get"));

    // Final parameters and reserved names cannot be given; unexported or missing actions do not exist.
    assert_eq!(anonymous.get(web("default/echo.json?fixed=no")).send().await.unwrap().status(), 400);
    assert_eq!(anonymous.get(web("default/echo.json?__ow_user=root")).send().await.unwrap().status(), 400);
    for missing in ["default/private.json", "default/nothing.json", "demo/echo.json"] {
        let reply = anonymous.get(web(missing)).send().await.unwrap();
        assert_eq!(reply.status(), 404, "{missing}");
        assert_eq!(reply.json::<Value>().await.unwrap()["error"], "The requested resource does not exist.");
    }

    // Status and headers from the result; an application error answered as the response.
    let redirect = anonymous.get(web("default/redirect")).send().await.unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "http://example.org/");
    let teapot = anonymous.delete(web("default/teapot.http")).send().await.unwrap();
    assert_eq!((teapot.status().as_u16(), teapot.text().await.unwrap()), (418, "teapot".into()));

    // raw-http: the query and body arrive unparsed (JSON as base64, as OpenWhisk treats it).
    let raw: Value = anonymous
        .post(web("default/raw.json?a=1"))
        .json(&json!({"b": 2}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["__ow_query"], "a=1");
    assert_eq!(raw["__ow_body"], "eyJiIjoyfQ==");
    assert!(raw.get("a").is_none() && raw.get("b").is_none());

    // require-whisk-auth: a secret header, or a key whose namespace becomes __ow_user.
    assert_eq!(anonymous.get(web("default/secret.json")).send().await.unwrap().status(), 401);
    let wrong = anonymous.get(web("default/secret.json")).header("x-require-whisk-auth", "nope");
    assert_eq!(wrong.send().await.unwrap().status(), 401);
    let right = anonymous.get(web("default/secret.json")).header("x-require-whisk-auth", "s3cret");
    let right: Value = right.send().await.unwrap().json().await.unwrap();
    assert!(right["__ow_headers"].get("x-require-whisk-auth").is_none(), "the secret stays hidden");
    assert_eq!(anonymous.get(web("default/keyed.json")).send().await.unwrap().status(), 401);
    let (user, password) = GUEST_KEY.split_once(':').unwrap();
    let keyed = anonymous.get(web("default/keyed.json")).basic_auth(user, Some(password));
    let keyed: Value = keyed.send().await.unwrap().json().await.unwrap();
    assert_eq!(keyed["__ow_user"], "guest");

    // CORS preflight, answered without running the action.
    let preflight =
        anonymous.request(reqwest::Method::OPTIONS, web("default/echo.json")).send().await.unwrap();
    assert_eq!(preflight.status(), 200);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("PATCH"));
}
