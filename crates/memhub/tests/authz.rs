//! Authorization as an attacker sees it: every role x every operation (REST and MCP)
//! x own/other user x own/other tenant x in/out-of-scope system and kind, against a
//! real server with real keys. Each call asserts the exact status and that no
//! memory outside the caller's scope appears; afterwards every call must have left
//! exactly one audit record naming the right principal, action and outcome.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::{create_key, Server};
use serde_json::{json, Value};

/// One principal of the matrix.
#[derive(Clone)]
struct Who {
    name: &'static str,
    secret: String,
}

impl Who {
    /// The audit actor of this key: `key:` + its id (the secret's first 15 chars).
    fn actor(&self) -> String {
        format!("key:{}", &self.secret[..15])
    }
}

/// A call made, for the audit check.
struct Made {
    request_id: String,
    actor: String,
    status: u16,
    action: String,
}

struct Client {
    http: reqwest::Client,
    base: String,
    made: Vec<Made>,
    n: usize,
}

fn action(method: &str, path: &str, body: &Value) -> String {
    if path == "/mcp" {
        return format!("mcp.{}", body["params"]["name"].as_str().unwrap_or(""));
    }
    let path = path.split('?').next().unwrap();
    let is_id = |p: &str| p.len() == 36 && p.chars().filter(|c| *c == '-').count() == 4;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "memories"]) => "memory.store",
        ("GET", ["v1", "memories"]) => "memory.list",
        ("GET", ["v1", "memories", id]) if is_id(id) => "memory.get",
        ("PATCH", ["v1", "memories", _]) => "memory.update",
        ("DELETE", ["v1", "memories", _]) => "memory.delete",
        ("GET", ["v1", "memories", _, "history"]) => "memory.history",
        ("POST", ["v1", "search"]) => "memory.search",
        ("GET", ["v1", "export"]) => "memory.export",
        ("GET", ["v1", "stats"]) => "stats",
        ("POST", ["v1", "schemas"]) => "schema.register",
        ("GET", ["v1", "keys"]) => "key.list",
        ("PUT", ["v1", "retention"]) => "retention.set",
        ("GET", ["v1", "audit"]) => "audit.query",
        ("POST", ["v1", "erase"]) => "erase",
        other => panic!("no action for {other:?}"),
    }
    .to_string()
}

impl Client {
    fn new(server: &Server) -> Client {
        Client { http: reqwest::Client::new(), base: server.base.clone(), made: Vec::new(), n: 0 }
    }

    async fn call(
        &mut self,
        who: &Who,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        self.n += 1;
        let request_id = format!("matrix-{}-{}", who.name, self.n);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(m, format!("{}{path}", self.base))
            .bearer_auth(&who.secret)
            .header("x-request-id", &request_id);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let lines = resp.headers().get("content-type").is_some_and(|v| v.to_str().unwrap_or("").contains("ndjson"));
        let text = resp.text().await.unwrap();
        let value =
            if lines { Value::String(text) } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        let body = body.unwrap_or(Value::Null);
        self.made.push(Made { request_id, actor: who.actor(), status, action: action(method, path, &body) });
        (status, value)
    }

    /// A stateless JSON-RPC `tools/call`: `(is_error, structured result)`.
    async fn tool(&mut self, who: &Who, name: &str, arguments: Value) -> (bool, Value) {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}});
        let (status, v) = self.call(who, "POST", "/mcp", Some(body), &[]).await;
        assert_eq!(status, 200, "{name}: {v}");
        let result = &v["result"];
        // The audit record of a tool call carries the status the REST call would have.
        let code = result["code"].as_str().unwrap_or("");
        let last = self.made.last_mut().unwrap();
        last.status = match code {
            "" => 200,
            "forbidden" => 403,
            "memory_not_found" => 404,
            _ => 400,
        };
        (result["isError"].as_bool().unwrap_or(false), result["structuredContent"].clone())
    }
}

fn ids_of(v: &Value, key: &str) -> BTreeSet<String> {
    v[key].as_array().unwrap_or(&Vec::new()).iter().map(|m| m["memory_id"].as_str().unwrap().to_string()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn note(memory_id: &str, system: &str, user: Option<&str>, content: &str) -> Value {
    let mut v = json!({"memory_id": memory_id, "system_id": system, "kind": "note", "content": content});
    if let Some(u) = user {
        v["user_id"] = json!(u);
    }
    v
}

fn insight(memory_id: &str, content: &str) -> Value {
    json!({"memory_id": memory_id, "system_id": "github", "kind": "insight", "content": content,
           "attributes": {"category": "ops", "confidence": 0.5, "recommendations": []}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_sees_and_changes_exactly_its_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let who = |name: &'static str, args: &[&str]| Who { name, secret: create_key(dir, args) };
    let admin = who("admin", &["--role", "admin", "--tenant", "acme"]);
    let manager = who("manager", &["--role", "manager", "--tenant", "acme"]);
    let ann = who("ann", &["--role", "user", "--tenant", "acme", "--user", "ann"]);
    let bob = who("bob", &["--role", "user", "--tenant", "acme", "--user", "bob"]);
    let svc = who("svc", &["--role", "service", "--tenant", "acme", "--systems", "slack"]);
    let svcr = who("svcr", &["--role", "service", "--tenant", "acme", "--systems", "slack", "--read"]);
    let gadmin = who("gadmin", &["--role", "admin", "--tenant", "globex"]);
    let root = who("root", &["--role", "admin", "--tenant", "acme", "--superadmin"]);
    let server = Server::start_in(dir, &[("MEMHUB_RATE_PER_SECOND", "0"), ("MEMHUB_AUTH_FAILURES_PER_MINUTE", "1000")]);
    let mut c = Client::new(&server);

    // Seed: three acme memories in two systems, kinds and users, one in globex.
    let mut id = HashMap::new();
    for (body, by) in [
        (note("A1", "slack", Some("ann"), "matrixmarker ann's note"), &admin),
        (note("B1", "slack", Some("bob"), "matrixmarker bob's note"), &admin),
        (insight("G1", "matrixmarker an insight from github"), &admin),
        (note("X1", "slack", Some("ann"), "matrixmarker globex's note"), &gadmin),
    ] {
        let (status, v) = c.call(by, "POST", "/v1/memories", Some(body.clone()), &[]).await;
        assert_eq!(status, 201, "{v}");
        id.insert(body["memory_id"].as_str().unwrap().to_string(), v["memory"]["id"].as_str().unwrap().to_string());
    }

    let everyone = [&admin, &manager, &ann, &bob, &svc, &svcr, &gadmin, &root];
    let visible = |w: &Who| -> Option<BTreeSet<String>> {
        match w.name {
            "admin" | "manager" | "root" => Some(set(&["A1", "B1", "G1"])),
            "ann" => Some(set(&["A1"])),
            "bob" => Some(set(&["B1"])),
            "svc" => None,
            "svcr" => Some(set(&["A1", "B1"])),
            "gadmin" => Some(set(&["X1"])),
            _ => unreachable!(),
        }
    };

    // Whether a returned memory is inside `w`'s scope at all.
    let in_scope = |w: &Who, m: &Value| -> bool {
        let (tenant, user, system) = (m["tenant"].as_str(), m["user_id"].as_str(), m["system_id"].as_str());
        match w.name {
            "admin" | "manager" | "root" => tenant == Some("acme"),
            "ann" | "bob" => tenant == Some("acme") && user == Some(w.name),
            "svcr" => tenant == Some("acme") && system == Some("slack"),
            "gadmin" => tenant == Some("globex"),
            _ => false,
        }
    };
    let seeds = set(&["A1", "B1", "G1", "X1"]);

    for w in everyone {
        let sees = visible(w);
        let read_status = if sees.is_some() { 200 } else { 403 };
        let sees = sees.unwrap_or_default();
        // Reads: search, list, export, stats, MCP search return exactly the scope.
        let (s, v) = c.call(w, "POST", "/v1/search", Some(json!({"query": "matrixmarker", "limit": 50})), &[]).await;
        assert_eq!(s, read_status, "{} search: {v}", w.name);
        if s == 200 {
            assert_eq!(ids_of(&v, "results"), sees, "{} search", w.name);
        }
        // Listings also hold earlier principals' writes: all must be in scope, and
        // of the seeds exactly the visible ones.
        let (s, v) = c.call(w, "GET", "/v1/memories?limit=1000", None, &[]).await;
        assert_eq!(s, read_status, "{} list", w.name);
        let mut listed = 0;
        if s == 200 {
            let memories = v["memories"].as_array().unwrap();
            assert!(memories.iter().all(|m| in_scope(w, m)), "{} list: foreign memory in {v}", w.name);
            assert_eq!(&ids_of(&v, "memories") & &seeds, sees, "{} list", w.name);
            listed = memories.len();
        }
        let (s, v) = c.call(w, "GET", "/v1/export", None, &[]).await;
        assert_eq!(s, read_status, "{} export", w.name);
        if s == 200 {
            let exported: Vec<Value> = v.as_str().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert!(exported.iter().all(|m| in_scope(w, m)), "{} export: foreign memory", w.name);
            let ids: BTreeSet<String> = exported.iter().map(|m| m["memory_id"].as_str().unwrap().to_string()).collect();
            assert_eq!(&ids & &seeds, sees, "{} export", w.name);
            assert_eq!(exported.len(), listed, "{} export and list agree", w.name);
        }
        let (s, v) = c.call(w, "GET", "/v1/stats", None, &[]).await;
        assert_eq!(s, read_status, "{} stats", w.name);
        if s == 200 {
            assert_eq!(v["memories"], json!(listed), "{} stats", w.name);
        }
        let (failed, v) = c.tool(w, "search_memories", json!({"query": "matrixmarker", "limit": 50})).await;
        assert_eq!(failed, read_status == 403, "{} mcp search: {v}", w.name);
        if !failed {
            assert_eq!(ids_of(&v, "results"), sees, "{} mcp search", w.name);
        } else {
            assert_eq!(v["code"], "forbidden");
        }
        // The change feed (MCP list_changes; GET /v1/events reads the same log the same
        // way, tests/events.rs): only changes in scope, and of the seeds' creations
        // exactly the visible ones.
        let (failed, v) = c.tool(w, "list_changes", json!({"after": 0, "limit": 1000})).await;
        assert_eq!(failed, read_status == 403, "{} list_changes: {v}", w.name);
        if !failed {
            let changes = v["changes"].as_array().unwrap();
            assert!(changes.iter().all(|ch| in_scope(w, ch)), "{} list_changes: foreign change in {v}", w.name);
            let created: BTreeSet<String> = changes
                .iter()
                .filter(|ch| ch["op"] == "created")
                .filter_map(|ch| ch["memory_id"].as_str().map(String::from))
                .collect();
            assert_eq!(&created & &seeds, sees, "{} list_changes", w.name);
        } else {
            assert_eq!(v["code"], "forbidden");
        }

        // Get and history by id: 200 inside the scope, 404 outside (no existence leak).
        for m in ["A1", "B1", "G1", "X1"] {
            let expected = if read_status == 403 {
                403
            } else if sees.contains(m) {
                200
            } else {
                404
            };
            let (s, v) = c.call(w, "GET", &format!("/v1/memories/{}", id[m]), None, &[]).await;
            assert_eq!(s, expected, "{} get {m}: {v}", w.name);
            if s == 200 {
                assert_eq!(v["memory_id"], m);
            }
            let (s, _) = c.call(w, "GET", &format!("/v1/memories/{}/history", id[m]), None, &[]).await;
            assert_eq!(s, expected, "{} history {m}", w.name);
            let (failed, v) = c.tool(w, "get_memory", json!({"id": id[m]})).await;
            assert_eq!(failed, expected != 200, "{} mcp get {m}: {v}", w.name);
        }

        // Writes: own user and system, another user, another system, a kind.
        let tag = w.name;
        let own_user = match w.name {
            "ann" => Some("ann"),
            "bob" => Some("bob"),
            _ => None,
        };
        let may_write_notes = w.name != "manager";
        let (s, v) =
            c.call(w, "POST", "/v1/memories", Some(note(&format!("w-{tag}"), "slack", own_user, "a write")), &[]).await;
        assert_eq!(s, if may_write_notes { 201 } else { 403 }, "{} store own: {v}", w.name);
        if s == 201 {
            let stored_user = v["memory"]["user_id"].as_str();
            if w.name == "ann" || w.name == "bob" {
                assert_eq!(stored_user, Some(w.name), "a user's memory is theirs");
            }
        }
        let (s, _) = c
            .call(w, "POST", "/v1/memories", Some(note(&format!("u-{tag}"), "slack", Some("carol"), "as carol")), &[])
            .await;
        let as_other_user = match w.name {
            "ann" | "bob" | "manager" => 403,
            _ => 201,
        };
        assert_eq!(s, as_other_user, "{} store for another user", w.name);
        let (s, _) = c
            .call(w, "POST", "/v1/memories", Some(note(&format!("s-{tag}"), "github", own_user, "elsewhere")), &[])
            .await;
        let other_system = match w.name {
            "svc" | "svcr" | "manager" => 403,
            _ => 201,
        };
        assert_eq!(s, other_system, "{} store in another system", w.name);
        let (s, _) = c.call(w, "POST", "/v1/memories", Some(insight(&format!("i-{tag}"), "an insight")), &[]).await;
        let insight_status = match w.name {
            "svc" | "svcr" => 403,
            // A user's insight gets their user_id, which the insight kind allows.
            _ => 201,
        };
        assert_eq!(s, insight_status, "{} store insight", w.name);
        // Overwriting bob's memory through its key.
        let (s, _) = c.call(w, "POST", "/v1/memories", Some(note("B1", "slack", Some("bob"), "hijacked")), &[]).await;
        let hijack = match w.name {
            "admin" | "root" | "bob" | "svc" | "svcr" => 200,
            // globex writes its own B1, in its own tenant.
            "gadmin" => 201,
            _ => 403,
        };
        assert_eq!(s, hijack, "{} overwrite B1", w.name);
        if s == 200 {
            // Put B1 back for the next principal.
            let (s, _) = c
                .call(
                    &admin,
                    "POST",
                    "/v1/memories",
                    Some(note("B1", "slack", Some("bob"), "matrixmarker bob's note")),
                    &[],
                )
                .await;
            assert_eq!(s, 200);
        }
        let (failed, v) = c
            .tool(w, "store_memory", json!({"memory_id": format!("m-{tag}"), "text": "via mcp", "metadata": {"source": "slack", "type": "note"}}))
            .await;
        assert_eq!(failed, !may_write_notes, "{} mcp store: {v}", w.name);

        // Change and delete by id: 404 outside the read scope, 403 outside the write scope.
        let change_b1 = match w.name {
            "admin" | "root" | "bob" | "svcr" => 200,
            "manager" | "svc" => 403,
            _ => 404,
        };
        let (s, v) = c.call(w, "PATCH", &format!("/v1/memories/{}", id["B1"]), Some(json!({"tags": [tag]})), &[]).await;
        assert_eq!(s, change_b1, "{} patch B1: {v}", w.name);
        let (s, v) = c
            .call(
                &admin,
                "POST",
                "/v1/memories",
                Some(note(&format!("z-{tag}"), "slack", Some("bob"), "to delete")),
                &[],
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let z = v["memory"]["id"].as_str().unwrap().to_string();
        let (s, _) = c.call(w, "DELETE", &format!("/v1/memories/{z}"), None, &[]).await;
        assert_eq!(s, if w.name == "gadmin" { 404 } else { change_b1 }, "{} delete", w.name);

        // Administration: admins only.
        let admin_status = |ok: u16| if matches!(w.name, "admin" | "gadmin" | "root") { ok } else { 403 };
        let (s, _) = c.call(w, "GET", "/v1/keys", None, &[]).await;
        assert_eq!(s, admin_status(200), "{} keys", w.name);
        let (s, _) = c.call(w, "PUT", "/v1/retention", Some(json!({"policies": []})), &[]).await;
        assert_eq!(s, admin_status(200), "{} retention", w.name);
        let (s, _) = c.call(w, "GET", "/v1/audit?limit=5", None, &[]).await;
        assert_eq!(s, admin_status(200), "{} audit", w.name);
        let schema = json!({"kind": format!("matrix_{tag}"), "schema": {"type": "object"}});
        let (s, _) = c.call(w, "POST", "/v1/schemas", Some(schema), &[]).await;
        assert_eq!(s, admin_status(201), "{} schemas", w.name);
        let (s, v) = c.call(w, "POST", "/v1/erase", Some(json!({"user_id": "nobody"})), &[]).await;
        assert_eq!(s, admin_status(200), "{} erase", w.name);
        if s == 200 {
            assert_eq!(v["memories"], 0);
        }

        // Another tenant: only a superadmin may name one.
        let (s, v) = c
            .call(w, "POST", "/v1/search", Some(json!({"query": "matrixmarker"})), &[("x-memhub-tenant", "globex")])
            .await;
        if w.name == "root" {
            assert_eq!(s, 200);
            assert_eq!(ids_of(&v, "results"), set(&["X1"]));
        } else if w.name == "gadmin" {
            assert_eq!(s, 200, "its own tenant by name");
        } else {
            assert_eq!(s, 403, "{} other tenant", w.name);
        }
    }

    // Every call left exactly one audit record with the right principal, action and outcome.
    let (s, _) = c.call(&admin, "GET", "/v1/audit?limit=1", None, &[]).await; // flushes the writer
    assert_eq!(s, 200);
    let records = common::audit_records(dir);
    let mut by_request: HashMap<&str, Vec<&memhub_govern::AuditRecord>> = HashMap::new();
    for r in &records {
        by_request.entry(r.event.request_id.as_str()).or_default().push(r);
    }
    let last = c.made.len() - 1;
    for m in &c.made[..last] {
        let found = by_request.get(m.request_id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(found.len(), 1, "{}: {} records", m.request_id, found.len());
        let e = &found[0].event;
        assert_eq!(e.actor, m.actor, "{}", m.request_id);
        assert_eq!(e.action, m.action, "{}", m.request_id);
        assert_eq!(e.status, m.status, "{} {}", m.request_id, m.action);
        assert_eq!(e.outcome, memhub_govern::Outcome::of_status(m.status), "{}", m.request_id);
        assert_eq!(e.client, "127.0.0.1");
        let text = serde_json::to_string(&found[0]).unwrap();
        assert!(!text.contains("matrixmarker") && !text.contains("hijacked"), "no content in the audit log: {text}");
    }
    let (report, intact) = common::audit_verify(dir);
    assert!(intact && report["first_broken"].is_null(), "{report}");
    // The audit read's own record may land between the two commands.
    assert!(report["records"].as_u64() >= Some(records.len() as u64), "{report}");
}
