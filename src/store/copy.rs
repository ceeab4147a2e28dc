//! `authbase copy`: every row of one database into another, e.g. from the SQLite file
//! to PostgreSQL when a deployment grows to several replicas. Both are opened (and so
//! migrated) to the same schema first; the destination must be empty. Sessions, sign-in
//! requests, queued mail, signing keys and the audit trail all move, so users stay
//! signed in and nothing queued is lost. Not copied: the running-server list and rate
//! limit windows (both rebuild themselves).

use super::db::{Arg, Db, Pool, ToArg, Ty, Value};
use super::{Result, Store, StoreError};

/// Tables in an order that satisfies their foreign keys, with their integer key (read
/// in chunks after the last one copied) or, for the small ones, the columns that order
/// them.
const TABLES: &[(&str, Key)] = &[
    ("users", Key::Int("id")),
    ("sessions", Key::Int("id")),
    ("sign_in_requests", Key::Int("id")),
    ("outbox", Key::Int("id")),
    ("user_groups", Key::Order("user_id, name")),
    ("audit", Key::Int("id")),
    ("revocations", Key::Int("seq")),
    ("signing_keys", Key::Order("kid")),
];

enum Key {
    Int(&'static str),
    Order(&'static str),
}

/// Rows read and written at a time.
const CHUNK: i64 = 1000;

/// Rows copied per table.
pub type Copied = Vec<(&'static str, usize)>;

impl Store {
    /// Copy every row of `self` into `to`, in one transaction on `to`; refused when `to`
    /// has users or sessions already. The source is only read.
    pub async fn copy_into(&self, to: &Store) -> Result<Copied> {
        let (from, to) = (self.pool.clone(), to.pool.clone());
        tokio::task::spawn_blocking(move || copy(&from, &to))
            .await
            .map_err(|e| StoreError::Db(format!("copy task failed: {e}")))?
    }
}

fn copy(from: &Pool, to: &Pool) -> Result<Copied> {
    let (src, dst) = (from.get()?, to.get()?);
    let tx = dst.transaction()?;
    for (t, _) in TABLES {
        let n: i64 = tx.query_one(&format!("SELECT COUNT(*) FROM {t}"), &[])?;
        if n > 0 && *t != "signing_keys" {
            return Err(StoreError::Db(format!(
                "the destination is not empty ({t} has {n} rows): copy into a new database"
            )));
        }
    }
    // A server started on the destination made a key of its own: the source's keys win,
    // so assertions already issued keep verifying.
    tx.execute("DELETE FROM signing_keys", &[])?;
    let mut copied = Vec::new();
    for (table, key) in TABLES {
        let columns = columns(&src, table)?;
        let types = column_types(&dst, table, &columns)?;
        let list = columns.join(", ");
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let insert = format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", "));
        let (mut n, mut after) = (0usize, i64::MIN);
        loop {
            let read = |r: &super::db::Row| {
                (0..columns.len())
                    .map(|i| r.get::<Value>(i))
                    .collect::<Result<Vec<_>>>()
            };
            let rows = match key {
                Key::Int(k) => src.query_map(
                    &format!("SELECT {list} FROM {table} WHERE {k} > ?1 ORDER BY {k} LIMIT ?2"),
                    &[Arg::Int(after), Arg::Int(CHUNK)],
                    read,
                )?,
                Key::Order(o) => src.query_map(
                    &format!("SELECT {list} FROM {table} ORDER BY {o} LIMIT ?1 OFFSET ?2"),
                    &[Arg::Int(CHUNK), Arg::Int(n as i64)],
                    read,
                )?,
            };
            if let (Key::Int(k), Some(last)) = (key, rows.last()) {
                let i = columns
                    .iter()
                    .position(|c| c == k)
                    .expect("the key is a column");
                match last[i] {
                    Value::Int(v) => after = v,
                    _ => return Err(StoreError::Db(format!("{table}.{k} is not an integer"))),
                }
            }
            for row in &rows {
                let args: Vec<Arg> = row
                    .iter()
                    .zip(&types)
                    .map(|(v, t)| match v {
                        Value::Null => Arg::Null(*t),
                        v => v.to_arg(),
                    })
                    .collect();
                tx.execute(&insert, &args)?;
            }
            n += rows.len();
            if (rows.len() as i64) < CHUNK {
                break;
            }
        }
        copied.push((*table, n));
    }
    if tx.is_postgres() {
        // Identity columns go on after the largest copied id.
        for (table, key) in TABLES.iter().filter_map(|(t, k)| match k {
            Key::Int(k) => Some((t, k)),
            Key::Order(_) => None,
        }) {
            tx.query_one::<i64>(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{key}'),
                                   COALESCE((SELECT MAX({key}) FROM {table}), 0) + 1, false)"
                ),
                &[],
            )?;
        }
    }
    tx.commit()?;
    Ok(copied)
}

/// The parameter type each column takes (what a NULL in it is bound as).
fn column_types(db: &Db, table: &str, columns: &[String]) -> Result<Vec<Ty>> {
    if !db.is_postgres() {
        return Ok(vec![Ty::Text; columns.len()]);
    }
    let types: Vec<(String, String)> = db.query_map(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = ?1",
        &[Arg::Text(table)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    columns
        .iter()
        .map(|c| match types.iter().find(|(n, _)| n == c) {
            Some((_, t)) if t == "bigint" => Ok(Ty::Int),
            Some((_, t)) if t == "bytea" => Ok(Ty::Blob),
            Some(_) => Ok(Ty::Text),
            None => Err(StoreError::Db(format!(
                "the destination has no column {table}.{c}: is it at the same schema version?"
            ))),
        })
        .collect()
}

/// A table's columns, in order.
fn columns(db: &Db, table: &str) -> Result<Vec<String>> {
    let cols: Vec<String> = if db.is_postgres() {
        db.query_map(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = ?1 ORDER BY ordinal_position",
            &[Arg::Text(table)],
            |r| r.get(0),
        )?
    } else {
        db.query_map(
            "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            &[Arg::Text(table)],
            |r| r.get(0),
        )?
    };
    if cols.is_empty() {
        return Err(StoreError::Db(format!("no table {table}")));
    }
    Ok(cols)
}
