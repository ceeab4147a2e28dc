//! For tests: a fresh, empty database on the backend the test run uses. SQLite in a
//! temporary folder by default; in the PostgreSQL pass of `scripts/test`
//! (`AUTHBASE_TEST_BACKEND=postgres`), a new database on the server that
//! `AUTHBASE_TEST_POSTGRES` names.

use super::{db, Store};

/// A database for one test; its SQLite folder is removed when this is dropped (PostgreSQL
/// test databases live in the throwaway cluster `scripts/test` starts and removes).
pub struct TestDb {
    /// What `database` is set to.
    pub database: String,
    pub dir: tempfile::TempDir,
}

/// The PostgreSQL server tests use, if this is the PostgreSQL pass.
pub fn postgres_server() -> Option<String> {
    if std::env::var("AUTHBASE_TEST_BACKEND").ok()? != "postgres" {
        return None;
    }
    Some(
        std::env::var("AUTHBASE_TEST_POSTGRES")
            .ok()
            .filter(|u| !u.is_empty())
            .expect("AUTHBASE_TEST_BACKEND=postgres needs AUTHBASE_TEST_POSTGRES (scripts/test sets both)"),
    )
}

pub fn database() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let database = match postgres_server() {
        Some(server) => new_postgres_database(&server),
        None => dir.path().join("t.db").display().to_string(),
    };
    TestDb { database, dir }
}

/// A store on a fresh database.
pub fn store() -> (TestDb, Store) {
    let d = database();
    let s = Store::open(&d.database, std::time::Duration::from_secs(5)).unwrap();
    (d, s)
}

/// `CREATE DATABASE` a new one on `server` (a URL naming any database there); its URL.
pub fn new_postgres_database(server: &str) -> String {
    let name = format!("t_{}", crate::secrets::hex(&crate::secrets::random::<8>()));
    db::blocking(|| {
        let mut c = postgres::Client::connect(server, postgres::NoTls)
            .unwrap_or_else(|e| panic!("AUTHBASE_TEST_POSTGRES={server}: {e}"));
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    });
    let mut u = url::Url::parse(server).unwrap();
    u.set_path(&name);
    u.to_string()
}
