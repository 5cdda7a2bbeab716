//! `memhub migrate --to postgres://…`: copy the embedded store of a data dir into a
//! PostgreSQL database, for a deployment that moves to replicas.
//!
//! What is copied, keeping what clients and auditors rely on:
//! - every memory with its ids, versions, times, vector and tier, and every
//!   superseded version before it (written in version order, each superseded at
//!   the time its successor was written), through the store's own write path, so
//!   the target's change log and the replicas that follow it see them;
//! - registered schemas, retention policies, the knowledge graph (entities and
//!   relations by name; their internal ids are new);
//! - API keys (their argon2 hashes), and the audit chain record for record, with
//!   its hashes, so `memhub audit verify` on the target ends at the source's head.
//!
//! Resumable: a memory already in the target (same id), a key already there and
//! the audit records up to the target's head are skipped, so a migration stopped
//! half-way is finished by running it again. Not copied: the cold tier (refused:
//! thaw it first), the pull worker's ledger and webhooks (register them again).

use std::collections::HashSet;

use memhub_engine::{MemoryStore, OpenMode, SqliteStore, StoreTx};
use memhub_govern::{AuditTable, KeyTable};
use memhub_postgres::{PostgresAudit, PostgresConfig, PostgresKeys, PostgresStore};
use memhub_types::{ChangeOp, Memory};
use serde_json::json;

use memhub_server::Config;

/// Memories per target transaction.
const BATCH: usize = 500;

/// Audit records per read and write.
const AUDIT_PAGE: usize = 5_000;

/// Copy the store of `config.data_dir` into the database at `to`.
pub fn migrate(
    config: &Config,
    to: &str,
    progress: &dyn Fn(Option<u64>, &str) -> indicatif::ProgressBar,
) -> Result<(), String> {
    let dir = &config.data_dir;
    if !dir.join("memhub.db").exists() {
        return Err(format!("{} holds no embedded store (memhub.db)", dir.display()));
    }
    let source = SqliteStore::open(dir, OpenMode::ReadOnly).map_err(|e| e.to_string())?;
    let cold = source.cold_entries().map_err(|e| e.to_string())?.len();
    if cold > 0 {
        return Err(format!(
            "{} holds {cold} cold memories (Parquet in the cold bucket); migrating the cold tier is not supported yet: \
             thaw them first (they move back to warm when read, or set engine.tiers so nothing is cold)",
            dir.display()
        ));
    }
    let pg = PostgresConfig { url: to.to_string(), ..config.storage.postgres.clone() };
    let target = PostgresStore::connect(&pg).map_err(|e| e.to_string())?;

    // Schemas and retention policies: small, copied first (memories are validated
    // against schemas by the engine, not by the store, so order is for readers).
    let known: HashSet<(String, u32)> =
        target.schemas().map_err(|e| e.to_string())?.into_iter().map(|s| (s.kind, s.version)).collect();
    let schemas: Vec<_> = source
        .schemas()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|s| !known.contains(&(s.kind.clone(), s.version)))
        .collect();
    let policies = source.retention_policies().map_err(|e| e.to_string())?;
    let mut tenants: Vec<String> = policies.iter().filter_map(|p| p.tenant.clone()).collect();
    tenants.sort();
    tenants.dedup();
    target
        .write(&mut |tx: &mut dyn StoreTx| {
            for s in &schemas {
                tx.add_schema(s)?;
            }
            for t in &tenants {
                let of_tenant: Vec<_> = policies.iter().filter(|p| p.tenant.as_deref() == Some(t)).cloned().collect();
                tx.set_retention(t, &of_tenant)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;

    // Memories, each with its history, a batch per transaction.
    let total = source.each_memory(None, &mut |_| Ok(())).map_err(|e| e.to_string())?;
    let bar = progress(Some(total as u64), "migrating memories");
    let (mut copied, mut skipped, mut versions) = (0usize, 0usize, 0usize);
    let mut batch: Vec<Memory> = Vec::with_capacity(BATCH);
    let mut flush = |batch: &mut Vec<Memory>| -> memhub_types::Result<()> {
        let mut chains = Vec::with_capacity(batch.len());
        for m in batch.drain(..) {
            let mut history = source.history(&m.tenant, &m.id)?;
            history.sort_by_key(|v| v.version);
            history.push(m);
            chains.push(history);
        }
        let (mut c, mut s, mut v) = (0, 0, 0);
        target.write(&mut |tx: &mut dyn StoreTx| {
            (c, s, v) = (0, 0, 0);
            for chain in &chains {
                let first = &chain[0];
                if tx.find_by_id(&first.tenant, &first.id)?.is_some() {
                    s += 1;
                    continue;
                }
                let row = tx.insert(first, ChangeOp::Created)?;
                for pair in chain.windows(2) {
                    tx.replace(row, &pair[1], pair[1].updated_at)?;
                }
                c += 1;
                v += chain.len() - 1;
            }
            Ok(())
        })?;
        copied += c;
        skipped += s;
        versions += v;
        bar.inc(chains.len() as u64);
        Ok(())
    };
    source
        .each_memory(None, &mut |m| {
            batch.push(m);
            if batch.len() >= BATCH {
                flush(&mut batch)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    flush(&mut batch).map_err(|e| e.to_string())?;
    bar.finish_and_clear();

    // The knowledge graph: entities first, then the relations between them (by name).
    let (mut entities, mut relations) = (Vec::new(), Vec::new());
    source
        .each_entity(&mut |tenant, e| {
            entities.push((tenant.to_string(), e));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    source
        .each_relation(&mut |tenant, r| {
            relations.push((tenant.to_string(), r));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    let now = memhub_types::time::now_micros();
    target
        .write(&mut |tx: &mut dyn StoreTx| {
            for (tenant, e) in &entities {
                tx.upsert_entity(tenant, e, now)?;
            }
            for (tenant, r) in &relations {
                tx.upsert_relation(tenant, r, now)?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;

    // API keys, hashes as they are.
    let (mut keys_copied, mut keys_skipped) = (0, 0);
    if dir.join("keys.db").exists() {
        let from = memhub_govern::SqliteKeys::open(dir).map_err(|e| e.to_string())?;
        let into = PostgresKeys::connect(&pg).map_err(|e| e.to_string())?;
        for row in from.list(None).map_err(|e| e.to_string())? {
            if into.get(&row.key.id).map_err(|e| e.to_string())?.is_some() {
                keys_skipped += 1;
            } else {
                into.insert(&row).map_err(|e| e.to_string())?;
                keys_copied += 1;
            }
        }
    }

    // The audit chain, record for record: the target continues from its head, which
    // must be a record of this chain.
    let mut audit_copied = 0;
    let audit_path = memhub_server::audit_path(dir);
    if audit_path.exists() {
        let from = memhub_govern::audit::open_read_only(&audit_path).map_err(|e| e.to_string())?;
        let into = PostgresAudit::connect(&pg).map_err(|e| e.to_string())?;
        let mut after = match into.query(&memhub_govern::AuditQuery { limit: Some(1), ..Default::default() }) {
            Ok(rows) => match rows.into_iter().next() {
                None => 0,
                Some(head) => {
                    let same = from.page(head.seq - 1, 1).map_err(|e| e.to_string())?;
                    if same.first().map(|r| &r.hash) != Some(&head.hash) {
                        return Err(format!(
                            "the target's audit log (record {}) is not this store's: migrate into a database no other \
                             store has written",
                            head.seq
                        ));
                    }
                    head.seq
                }
            },
            Err(e) => return Err(e.to_string()),
        };
        let bar = progress(None, "migrating the audit log");
        loop {
            let page = from.page(after, AUDIT_PAGE).map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            into.import(&page).map_err(|e| e.to_string())?;
            audit_copied += page.len();
            bar.inc(page.len() as u64);
        }
        bar.finish_and_clear();
    }

    let report = json!({
        "to": memhub_postgres::redact(to),
        "memories": {"copied": copied, "already_there": skipped, "superseded_versions": versions},
        "schemas": schemas.len(),
        "retention_tenants": tenants.len(),
        "entities": entities.len(),
        "relations": relations.len(),
        "keys": {"copied": keys_copied, "already_there": keys_skipped},
        "audit_records": audit_copied,
        "not_copied": "the pull worker's ledger and webhooks (register them again on the new deployment)",
    });
    println!("{report}");
    Ok(())
}
