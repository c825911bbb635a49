"""Hostile programs in each added language (JavaScript, Java, Go, Rust, Bash) against the real sandbox.

One program per language, compiled once, that reads what to do from stdin: write outside /tmp, read
the host's files and environment, reach a host listener, fork-bomb, loop forever, eat memory. Each
test of it runs in a fresh process, so one compile covers six attacks. Everything must be contained
as for Python and C (test_security.py): nothing written on the host, no secret out, nothing heard
by the listener, bounded time and no process left behind (the `no_leftovers` fixture).

Where a language's toolchain is not installed, the test checks what a user then gets instead: the
error naming the install command (`POSTTRAIN_SANDBOX_LANGUAGES=… make setup`).
"""

# ruff: noqa: E501  (the hostile programs are other languages' sources, kept readable)
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from posttrain.core.errors import MissingDependencyError
from rewards.sandbox import Sandbox
from rewards.sandbox.languages import missing_toolchain
from tests.rewards.sandbox.helpers import BOUND_S, MARK, ROOT, Listener, needs_bwrap, still_works

pytestmark = [needs_bwrap, pytest.mark.usefixtures("no_leftovers")]

HOSTILE = {
    "javascript": """
const fs = require('fs'), net = require('net'), cp = require('child_process');
const [mode, ...args] = fs.readFileSync(0, 'utf8').trim().split(/\\s+/);
if (mode === 'write') for (const p of args) {
  try { fs.writeFileSync(p, 'escaped'); console.log('WROTE ' + p); } catch (e) { console.log('refused ' + p); } }
else if (mode === 'read') { for (const p of args) {
  try { console.log(p + ' ' + fs.readFileSync(p, 'utf8')); } catch (e) { console.log('unreadable ' + p); } }
  console.log(JSON.stringify(process.env)); }
else if (mode === 'net') { const s = net.connect(+args[0], '127.0.0.1', () => { console.log('CONNECTED'); s.end(); });
  s.on('error', e => console.log('no tcp ' + e.code)); setTimeout(() => process.exit(0), 1500); }
else if (mode === 'fork') { for (;;) { try { cp.spawn('sleep', [args[0]], {detached: true, stdio: 'ignore'}); }
  catch (e) {} } }
else if (mode === 'loop') { for (;;) {} }
else if (mode === 'hog') { const a = []; for (;;) a.push(new Array(1e6).fill(1.5)); }
""",
    "java": """
import java.net.*; import java.nio.file.*; import java.util.*;
public class Hostile {
  public static void main(String[] argv) throws Exception {
    Scanner in = new Scanner(System.in); String mode = in.next(); List<String> args = new ArrayList<>();
    while (in.hasNext()) args.add(in.next());
    switch (mode) {
      case "write": for (String p : args) { try { Files.writeString(Path.of(p), "escaped"); System.out.println("WROTE " + p); }
                    catch (Exception e) { System.out.println("refused " + p); } } break;
      case "read": for (String p : args) { try { System.out.println(p + " " + Files.readString(Path.of(p))); }
                   catch (Exception e) { System.out.println("unreadable " + p); } }
                   System.out.println(System.getenv()); break;
      case "net": try (Socket s = new Socket()) { s.connect(new InetSocketAddress("127.0.0.1", Integer.parseInt(args.get(0))), 1000);
                    System.out.println("CONNECTED"); } catch (Exception e) { System.out.println("no tcp " + e); } break;
      case "fork": while (true) { try { new ProcessBuilder("sleep", args.get(0)).start(); } catch (Exception e) { }
                   new Thread(() -> { try { Thread.sleep(1000000); } catch (Exception e) { } }).start(); }
      case "loop": while (true) { }
      case "hog": List<long[]> hog = new ArrayList<>(); while (true) hog.add(new long[1 << 20]);
    }
  }
}
""",
    "go": """
package main

import ("fmt"; "io"; "net"; "os"; "os/exec"; "strings"; "time")

func main() {
	data, _ := io.ReadAll(os.Stdin)
	f := strings.Fields(string(data))
	mode, args := f[0], f[1:]
	switch mode {
	case "write":
		for _, p := range args {
			if err := os.WriteFile(p, []byte("escaped"), 0644); err == nil { fmt.Println("WROTE", p) } else { fmt.Println("refused", p) }
		}
	case "read":
		for _, p := range args {
			if b, err := os.ReadFile(p); err == nil { fmt.Println(p, string(b)) } else { fmt.Println("unreadable", p) }
		}
		fmt.Println(os.Environ())
	case "net":
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+args[0], time.Second); err == nil { fmt.Println("CONNECTED"); c.Close() } else { fmt.Println("no tcp", err) }
	case "fork":
		for { exec.Command("sleep", args[0]).Start(); go func() { time.Sleep(time.Hour) }() }
	case "loop":
		for { }
	case "hog":
		var hog [][]byte
		for { b := make([]byte, 1<<20); b[0] = 1; hog = append(hog, b) }
	}
}
""",
    "rust": """
use std::io::Read;
use std::time::Duration;
fn main() {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).unwrap();
    let f: Vec<&str> = s.split_whitespace().collect();
    let (mode, args) = (f[0], &f[1..]);
    match mode {
        "write" => for p in args { match std::fs::write(p, "escaped") { Ok(_) => println!("WROTE {}", p), Err(_) => println!("refused {}", p) } },
        "read" => {
            for p in args { match std::fs::read_to_string(p) { Ok(t) => println!("{} {}", p, t), Err(_) => println!("unreadable {}", p) } }
            for (k, v) in std::env::vars() { println!("env {}={}", k, v); }
        }
        "net" => match std::net::TcpStream::connect_timeout(&format!("127.0.0.1:{}", args[0]).parse().unwrap(), Duration::from_secs(1)) {
            Ok(_) => println!("CONNECTED"), Err(e) => println!("no tcp {}", e) },
        "fork" => loop {
            let _ = std::process::Command::new("sleep").arg(args[0]).spawn();
            let _ = std::thread::Builder::new().spawn(|| std::thread::sleep(Duration::from_secs(3600)));
        },
        "loop" => { let mut x = 0u64; loop { unsafe { std::ptr::write_volatile(&mut x, x.wrapping_add(1)); } } }
        "hog" => { let mut v: Vec<Vec<u8>> = Vec::new(); loop { v.push(vec![1u8; 1 << 20]); } }
        _ => {}
    }
}
""",
    "bash": """
read -r mode args
case "$mode" in
  write) for p in $args; do if (echo escaped > "$p") 2>/dev/null; then echo "WROTE $p"; else echo "refused $p"; fi; done ;;
  read) for p in $args; do if c=$(cat "$p" 2>/dev/null); then echo "$p $c"; else echo "unreadable $p"; fi; done; env ;;
  net) if (exec 3<>"/dev/tcp/127.0.0.1/$args") 2>/dev/null; then echo CONNECTED; else echo "no tcp"; fi ;;
  fork) f() { sleep "$args" & f | f & }; f; sleep 100 ;;
  loop) while :; do :; done ;;
  hog) printf -v x '%*s' 400000000 ''; echo "${#x}" ;;
esac
""",
}


@pytest.mark.parametrize("language", list(HOSTILE))
def test_hostile_programs_are_contained(sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        language: str) -> None:
    why = missing_toolchain(language)
    if why is not None:  # no toolchain here: the user gets the way to install it, not a crash or a silent 0
        assert "make setup" in why and "apt-get install" in why
        with pytest.raises(MissingDependencyError, match="POSTTRAIN_SANDBOX_LANGUAGES"):
            sandbox.run_tests(HOSTILE[language], language, [""])
        return
    secret = f"s3cr3t-{random.randint(10**8, 10**9)}"
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", secret)
    (tmp_path / "secret.txt").write_text(secret)
    targets = [tmp_path / "escaped.txt", ROOT / f"escaped-{MARK}.txt", Path("/etc/escaped"),
               Path(f"/usr/escaped-{MARK}"), Path(f"/tmp/escaped-{MARK}.txt")]
    listener = Listener()
    start = time.monotonic()
    try:
        inputs = {"write": "write " + " ".join(map(str, targets)),
                  "read": f"read {tmp_path / 'secret.txt'} /etc/shadow /proc/1/environ",
                  "net": f"net {listener.tcp.getsockname()[1]}", "fork": f"fork {MARK}", "loop": "loop", "hog": "hog"}
        # 4 s a test, not the suite's 2: a JVM or node starting on a loaded 2-core machine can take 2 s by itself
        compiled, results = sandbox.run_tests(HOSTILE[language], language, list(inputs.values()), timeout_s=4.0)
        time.sleep(0.3)
    finally:
        listener.close()
    assert time.monotonic() - start < 6 * BOUND_S  # bounded, however hostile
    assert compiled is None or compiled.status == "ok", compiled
    got = dict(zip(inputs, results, strict=True))
    # /tmp/escaped-… lands in the sandbox's private /tmp; every other path is refused, none exists on the host
    assert [line.split()[0] for line in got["write"].stdout.splitlines()] == ["refused"] * 4 + ["WROTE"], got["write"]
    assert [t for t in targets if t.exists()] == []
    assert got["read"].status == "ok" and "unreadable" in got["read"].stdout, got["read"]
    everything = "".join(r.stdout + r.stderr for r in results)
    assert secret not in everything
    assert "POSTTRAIN_TEST_SECRET" not in everything and str(ROOT) not in got["read"].stdout
    assert "CONNECTED" not in got["net"].stdout and listener.seen == []
    assert got["fork"].status != "ok" or got["fork"].wall_s < BOUND_S
    assert got["loop"].status == "timeout"
    # bash builds its string slowly: on a loaded machine its 2 s may run out before its memory does
    assert got["hog"].status in (("memory_limit", "timeout") if language == "bash" else ("memory_limit",)), got["hog"]
    still_works(sandbox)
