//! Memory stays flat whatever the file size: `fcache clean` of a 1 GiB stream.

use std::io::Write;
use std::process::Stdio;

use crate::common::*;

const GIB: usize = 1 << 30;
const LIMIT_KIB: i64 = 32 * 1024;

#[cfg(target_os = "linux")]
#[test]
fn clean_of_one_gib_keeps_peak_memory_under_32_mib() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    let mut child = alice
        .command("fcache", &repo)
        .args(["clean", "--", "huge.bin"])
        .env("FCACHE_REPORT_PEAK_MEMORY", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut hasher = fcache::hashing::HashingWriter::new(std::io::sink());
        let mut chunk = random_bytes(7, 1 << 20);
        let mut sent = 0;
        while sent < GIB {
            // Vary every chunk so the content is not one repeated block.
            chunk[..8].copy_from_slice(&(sent as u64).to_le_bytes());
            stdin.write_all(&chunk).unwrap();
            hasher.write_all(&chunk).unwrap();
            sent += chunk.len();
        }
        hasher.finish()
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
        out
    });
    let (id, len, _) = writer.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    let marker = String::from_utf8(reader.join().unwrap()).unwrap();
    assert_eq!(
        marker,
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{id}\nsize {len}\n")
    );
    // The kernel's peak RSS of the fcache process image itself. (wait4's
    // ru_maxrss would not do: a spawned child inherits the high-water mark of
    // the test process that forked it.)
    let peak_kib: i64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("fcache: peak memory "))
        .and_then(|l| l.strip_suffix(" KiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory report in {stderr:?}"));
    eprintln!("fcache clean of 1 GiB: peak RSS {peak_kib} KiB");
    assert!(
        peak_kib < LIMIT_KIB,
        "peak RSS {peak_kib} KiB is over {LIMIT_KIB} KiB"
    );
}
