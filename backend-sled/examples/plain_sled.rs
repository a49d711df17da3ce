//! A plain sled 0.34 application, as tidemark's users write one (no `TrackedDb`), for the
//! kill sweeps in `scripts/sweeps/`: it writes a round of changes, or prints every tree.
//!
//! ```sh
//! plain_sled write DIR ROUND   # round 0: 300 keys in `users` and `orders`; later rounds
//!                              # update a seventh of them and delete a third of those
//! plain_sled dump DIR          # tree, key, value per line (tidemark's own trees left out)
//! ```
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plain_sled: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let (Some(cmd), Some(dir)) = (args.get(1), args.get(2)) else {
        return Err("usage: plain_sled write DIR ROUND | dump DIR".into());
    };
    match cmd.as_str() {
        "write" => {
            let round: u32 = args.get(3).ok_or("write needs a ROUND")?.parse()?;
            let db = sled::open(dir)?;
            for name in ["users", "orders"] {
                let tree = db.open_tree(name)?;
                for i in 0..300u32 {
                    if round > 0 && i % 7 != round % 7 {
                        continue;
                    }
                    let key = format!("k{i:05}");
                    if round > 0 && i % 3 == 0 {
                        tree.remove(key.as_bytes())?;
                    } else {
                        let pad = "x".repeat((i % 50) as usize);
                        let value = format!(r#"{{"i":{i},"round":{round},"pad":"{pad}"}}"#);
                        tree.insert(key.as_bytes(), value.as_bytes())?;
                    }
                }
            }
            db.flush()?;
        }
        "dump" => {
            if !std::path::Path::new(dir).exists() {
                return Err(format!("{dir}: no such database").into());
            }
            let db = sled::open(dir)?;
            let mut names = db.tree_names();
            names.sort();
            let mut out = std::io::stdout().lock();
            for name in names {
                if name.starts_with(b"__tidemark") {
                    continue;
                }
                for entry in db.open_tree(&name)?.iter() {
                    let (k, v) = entry?;
                    writeln!(
                        out,
                        "{}\t{}\t{}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(&k),
                        String::from_utf8_lossy(&v)
                    )?;
                }
            }
        }
        other => return Err(format!("unknown command {other}").into()),
    }
    Ok(())
}
