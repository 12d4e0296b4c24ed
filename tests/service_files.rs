//! Checks the shipped service files with the programs that consume them.
//!
//! * `systemd/*.service` go through `systemd-analyze verify` (user and system manager), with
//!   `ExecStart=` pointed at the binary cargo built, since nothing is installed here.
//! * `dbus/org.overdub.Overdub1.conf` is loaded by a private `dbus-daemon`, which must start; as
//!   root the test also checks what the policy grants (own the name, call it) to whom.
//! * `dbus/*.service` activation files are read by a private `dbus-daemon`, which must list the
//!   bus name as activatable, and are cross-checked against the units they start.
//!
//! A missing tool fails the test (run `scripts/install-deps`). Each check is also run once on a
//! deliberately broken copy to prove that it can fail.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use tempfile::TempDir;

const BUS_NAME: &str = "org.overdub.Overdub1";
const INSTALLED_EXE: &str = "/usr/local/bin/overdub";
const USER_UNIT: &str = "systemd/overdub.service";
const SYSTEM_UNIT: &str = "systemd/overdub-system.service";
const POLICY: &str = "dbus/org.overdub.Overdub1.conf";
const SESSION_ACTIVATION: &str = "dbus/org.overdub.Overdub1.service";
const SYSTEM_ACTIVATION: &str = "dbus/org.overdub.Overdub1-system.service";

// ---------------------------------------------------------------------------------------------
// Helpers

/// Path of a file in the source tree.
fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Contents of a file in the source tree.
fn read_repo(rel: &str) -> String {
    fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Runs a command to completion with no stdin; a missing program fails the test.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (install it with scripts/install-deps)",
            cmd.get_program()
        )
    })
}

/// True when the tests run as root (decides which identities the policy test can take on).
fn running_as_root() -> bool {
    let out = run(Command::new("id").arg("-u"));
    assert!(out.status.success(), "id -u failed");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A key file (systemd unit or D-Bus activation file): section name → key → values, in order.
type KeyFile = HashMap<String, HashMap<String, Vec<String>>>;

/// Parses a key file strictly: every line is blank, a comment, a `[Section]` header or a
/// `Key=value` inside a section; anything else is an error.
fn parse_key_file(text: &str) -> Result<KeyFile, String> {
    let mut file = KeyFile::new();
    let mut section: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            file.entry(name.to_string()).or_default();
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not a key=value line: {raw:?}", n + 1))?;
        let section = section
            .as_ref()
            .ok_or_else(|| format!("line {}: key outside of any section", n + 1))?;
        file.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    Ok(file)
}

/// The single value of `key` in `section`; panics (fails the test) when absent or repeated.
fn single<'a>(file: &'a KeyFile, section: &str, key: &str) -> &'a str {
    let values = file
        .get(section)
        .and_then(|s| s.get(key))
        .unwrap_or_else(|| panic!("[{section}] {key}= is missing"));
    assert_eq!(
        values.len(),
        1,
        "[{section}] {key}= is set {values:?} times"
    );
    &values[0]
}

/// Whether `key` is set at all in `section`.
fn has_key(file: &KeyFile, section: &str, key: &str) -> bool {
    file.get(section).is_some_and(|s| s.contains_key(key))
}

// ---------------------------------------------------------------------------------------------
// systemd-analyze verify

/// Which systemd manager a unit is verified for.
#[derive(Clone, Copy, Debug)]
enum Manager {
    User,
    System,
}

/// What `systemd-analyze verify` said about one unit.
#[derive(Debug)]
struct Verdict {
    exit_ok: bool,
    /// Output lines that mention the unit under test (warnings about other units are ignored).
    diagnostics: Vec<String>,
}

impl Verdict {
    fn is_clean(&self) -> bool {
        self.exit_ok && self.diagnostics.is_empty()
    }
}

/// Writes a copy of a shipped unit into `dir`, with the installed binary path replaced by the
/// binary cargo built, and `edit` applied to its text.
fn unit_copy(dir: &Path, rel: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let text = read_repo(rel);
    assert!(
        text.contains(INSTALLED_EXE),
        "{rel} does not start {INSTALLED_EXE}"
    );
    let text = edit(text.replace(INSTALLED_EXE, env!("CARGO_BIN_EXE_overdub")));
    let file_name = Path::new(rel)
        .file_name()
        .expect("unit path has a file name");
    let path = dir.join(file_name);
    fs::write(&path, text).expect("write unit copy");
    path
}

/// Runs `systemd-analyze verify` on one unit file.
fn verify(manager: Manager, unit: &Path, runtime_dir: &Path) -> Verdict {
    let mut cmd = Command::new("systemd-analyze");
    if let Manager::User = manager {
        // The user manager needs a runtime directory; use a private one.
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime_dir);
    }
    cmd.args(["verify", "--man=no"]).arg(unit);
    let out = run(&mut cmd);
    let name = unit
        .file_name()
        .expect("unit has a file name")
        .to_string_lossy()
        .into_owned();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Verdict {
        exit_ok: out.status.success(),
        diagnostics: text
            .lines()
            .filter(|l| l.contains(&name))
            .map(str::to_string)
            .collect(),
    }
}

/// A fresh directory holding a private runtime directory for the user manager.
fn verify_dirs() -> (TempDir, PathBuf) {
    let dir = TempDir::new().expect("tempdir");
    let runtime = dir.path().join("runtime");
    fs::create_dir(&runtime).expect("runtime dir");
    (dir, runtime)
}

#[test]
fn user_unit_passes_systemd_analyze_verify() {
    let (dir, runtime) = verify_dirs();
    let unit = unit_copy(dir.path(), USER_UNIT, |t| t);
    let verdict = verify(Manager::User, &unit, &runtime);
    assert!(verdict.is_clean(), "{USER_UNIT}: {verdict:?}");
}

#[test]
fn system_unit_passes_systemd_analyze_verify() {
    let (dir, runtime) = verify_dirs();
    let unit = unit_copy(dir.path(), SYSTEM_UNIT, |t| t);
    let verdict = verify(Manager::System, &unit, &runtime);
    assert!(verdict.is_clean(), "{SYSTEM_UNIT}: {verdict:?}");
}

#[test]
fn verify_catches_broken_units() {
    for (manager, rel) in [(Manager::User, USER_UNIT), (Manager::System, SYSTEM_UNIT)] {
        // systemd ignores an unparsable value with a warning and exit status 0: the warning
        // alone must make the check fail.
        let (dir, runtime) = verify_dirs();
        let unit = unit_copy(dir.path(), rel, |t| {
            t.replace("Type=notify", "Type=no-such-type")
        });
        let verdict = verify(manager, &unit, &runtime);
        assert!(!verdict.is_clean(), "{rel} with a bad Type= passed");
        assert!(
            verdict
                .diagnostics
                .iter()
                .any(|l| l.contains("no-such-type")),
            "{rel}: no diagnostic for the bad Type=: {verdict:?}"
        );

        // A missing executable is a hard error: non-zero exit status.
        let (dir, runtime) = verify_dirs();
        let unit = unit_copy(dir.path(), rel, |t| {
            t.replace(env!("CARGO_BIN_EXE_overdub"), "/nonexistent/overdub")
        });
        let verdict = verify(manager, &unit, &runtime);
        assert!(
            !verdict.exit_ok,
            "{rel} with a missing ExecStart binary: {verdict:?}"
        );
    }
}

#[test]
fn units_carry_the_documented_settings() {
    let user = parse_key_file(&read_repo(USER_UNIT)).expect("user unit parses");
    let system = parse_key_file(&read_repo(SYSTEM_UNIT)).expect("system unit parses");
    for (rel, unit) in [(USER_UNIT, &user), (SYSTEM_UNIT, &system)] {
        for (key, want) in [
            ("Type", "notify"),
            ("BusName", BUS_NAME),
            ("WatchdogSec", "10"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
            ("LimitRTPRIO", "95"),
            ("LimitMEMLOCK", "infinity"),
        ] {
            assert_eq!(single(unit, "Service", key), want, "{rel}: {key}=");
        }
    }
    assert_eq!(
        single(&user, "Service", "ExecStart"),
        "/usr/local/bin/overdub daemon"
    );
    assert_eq!(
        single(&system, "Service", "ExecStart"),
        "/usr/local/bin/overdub daemon --system --data-dir /var/lib/overdub"
    );
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("User", "overdub"),
        ("SupplementaryGroups", "audio"),
        ("StateDirectory", "overdub"),
        ("RuntimeDirectory", "overdub"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        (
            "RestrictAddressFamilies",
            "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ),
        ("RestrictRealtime", "no"),
    ] {
        assert_eq!(single(&system, "Service", key), want, "system unit: {key}=");
    }
    // These would hide /dev/snd or unmap group "audio".
    for key in ["PrivateDevices", "PrivateUsers"] {
        assert!(!has_key(&system, "Service", key), "system unit sets {key}=");
    }
}

// ---------------------------------------------------------------------------------------------
// dbus-daemon

/// A private `dbus-daemon` started with `--nofork`; killed (by its own handle) when dropped.
struct PrivateBus {
    child: Child,
    address: String,
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        // The bus may already be gone; nothing more to do then.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default policy of a system bus (as in dbus-daemon's system.conf): nobody owns or calls
/// anything unless a later rule allows it.
const SYSTEM_DEFAULT_POLICY: &str = r#"
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>"#;

/// Writes a bus configuration into `dir` (listening on `dir/bus`, `body` appended) and starts a
/// `dbus-daemon` on it. Returns dbus-daemon's complaint when it refuses to start.
fn start_bus(dir: &Path, bus_type: &str, body: &str) -> Result<PrivateBus, String> {
    let socket = dir.join("bus");
    let config = dir.join("bus.conf");
    fs::write(
        &config,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <busconfig>\n  <type>{bus_type}</type>\n  <listen>unix:path={}</listen>\n  \
             <auth>EXTERNAL</auth>\n{body}\n</busconfig>\n",
            socket.display()
        ),
    )
    .expect("write bus config");
    // Its log goes to a file: a pipe nobody reads could fill up and stall the bus.
    let log = dir.join("dbus-daemon.log");
    let log_file = fs::File::create(&log).expect("create bus log");
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run dbus-daemon: {e} (scripts/install-deps)"));
    let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
    // The address is printed once the socket listens; EOF means the daemon gave up.
    let mut address = String::new();
    BufReader::new(stdout)
        .read_line(&mut address)
        .expect("read dbus-daemon stdout");
    if address.trim().is_empty() {
        let status = child.wait().expect("wait for dbus-daemon");
        let stderr = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("{status}: {stderr}"));
    }
    Ok(PrivateBus {
        child,
        address: address.trim().to_string(),
    })
}

/// A bus configuration body that includes `policy` after the system default policy.
fn policy_body(policy: &Path) -> String {
    format!(
        "{SYSTEM_DEFAULT_POLICY}\n  <include>{}</include>",
        policy.display()
    )
}

#[test]
fn policy_loads_into_dbus_daemon() {
    let dir = TempDir::new().expect("tempdir");
    let bus = start_bus(dir.path(), "system", &policy_body(&repo_path(POLICY)))
        .unwrap_or_else(|e| panic!("dbus-daemon rejected {POLICY}: {e}"));
    assert!(bus.address.starts_with("unix:path="), "{}", bus.address);
    // The bus answers.
    let out = run(Command::new("busctl")
        .arg(format!("--address={}", bus.address))
        .args([
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetId",
        ]));
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn dbus_daemon_refuses_a_broken_policy() {
    let dir = TempDir::new().expect("tempdir");
    let broken = dir.path().join("broken.conf");
    fs::write(
        &broken,
        read_repo(POLICY).replace("<allow own=", "<allow owner="),
    )
    .expect("write broken policy");
    let result = start_bus(dir.path(), "system", &policy_body(&broken));
    assert!(result.is_err(), "dbus-daemon accepted a broken policy");
}

/// Asks the bus for `BUS_NAME` with `busctl`, run as `identity` (extra arguments for `setpriv`,
/// empty = as ourselves). Returns whether the bus granted it.
fn may_own(bus: &PrivateBus, identity: &[&str]) -> bool {
    let out = busctl_as(
        bus,
        identity,
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            BUS_NAME,
            "4",
        ],
    );
    if out.status.success() {
        // 1 = primary owner, 4 = already the owner.
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches!(reply.trim(), "u 1" | "u 4"),
            "RequestName: {reply}"
        );
        true
    } else {
        assert_access_denied(&out);
        false
    }
}

/// Calls `org.freedesktop.DBus.Peer.Ping` on `BUS_NAME` as `identity`; whether it was allowed.
fn may_call(bus: &PrivateBus, identity: &[&str]) -> bool {
    let out = busctl_as(
        bus,
        identity,
        &["call", BUS_NAME, "/", "org.freedesktop.DBus.Peer", "Ping"],
    );
    if out.status.success() {
        true
    } else {
        assert_access_denied(&out);
        false
    }
}

fn assert_access_denied(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Access denied"),
        "expected a policy refusal, got: {err}"
    );
}

fn busctl_as(bus: &PrivateBus, identity: &[&str], args: &[&str]) -> Output {
    let mut cmd = if identity.is_empty() {
        Command::new("busctl")
    } else {
        let mut c = Command::new("setpriv");
        c.args(identity).arg("busctl");
        c
    };
    cmd.arg(format!("--address={}", bus.address)).args(args);
    run(&mut cmd)
}

#[test]
fn policy_grants_own_to_root_and_talk_to_audio() {
    let dir = TempDir::new().expect("tempdir");
    let bus = start_bus(dir.path(), "system", &policy_body(&repo_path(POLICY)))
        .unwrap_or_else(|e| panic!("dbus-daemon rejected {POLICY}: {e}"));
    if !running_as_root() {
        // An ordinary user may not own the name; the other identities need root to take on.
        assert!(!may_own(&bus, &[]), "a non-root user may own {BUS_NAME}");
        eprintln!("not root: checked only that this user may not own {BUS_NAME}");
        return;
    }
    // Other users reach the socket only through a world-readable directory.
    let mut perms = fs::metadata(dir.path()).expect("stat").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(dir.path(), perms).expect("chmod tempdir");

    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let nobody_in_audio = ["--reuid=65534", "--regid=65534", "--groups=audio"];
    assert!(!may_own(&bus, &nobody), "any user may own {BUS_NAME}");
    assert!(
        !may_own(&bus, &nobody_in_audio),
        "group audio may own {BUS_NAME}"
    );

    // Root owns the name (as the daemon would) and answers Peer.Ping through zbus's object
    // server, which runs on the runtime's worker threads while busctl is called from here.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _owner = runtime
        .block_on(async {
            let conn = zbus::connection::Builder::address(bus.address.as_str())
                .name(BUS_NAME)
                .build()
                .await?;
            conn.object_server();
            Ok::<_, zbus::Error>(conn)
        })
        .expect("root may own the name");
    assert!(may_call(&bus, &[]), "root may not call {BUS_NAME}");
    assert!(
        may_call(&bus, &nobody_in_audio),
        "group audio may not call {BUS_NAME}"
    );
    assert!(!may_call(&bus, &nobody), "anyone may call {BUS_NAME}");
}

// ---------------------------------------------------------------------------------------------
// D-Bus activation files

/// Parses an activation file and checks the parts common to both buses; returns it.
fn check_activation_file(rel: &str) -> KeyFile {
    let text = read_repo(rel);
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_default();
    assert_eq!(first, "[D-BUS Service]", "{rel}: first group");
    let file = parse_key_file(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(file.len(), 1, "{rel}: only one group expected");
    assert_eq!(single(&file, "D-BUS Service", "Name"), BUS_NAME, "{rel}");
    file
}

/// Lists the names a bus can activate.
fn activatable_names(bus: &PrivateBus) -> String {
    let out = run(Command::new("busctl")
        .arg(format!("--address={}", bus.address))
        .args([
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ListActivatableNames",
        ]));
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a bus of `bus_type` whose service directory holds `rel`, installed as `installed_as`.
fn bus_with_service_file(dir: &Path, bus_type: &str, rel: &str, installed_as: &str) -> PrivateBus {
    let services = dir.join("services");
    fs::create_dir(&services).expect("services dir");
    fs::copy(repo_path(rel), services.join(installed_as)).expect("copy activation file");
    let body = format!(
        "{SYSTEM_DEFAULT_POLICY}\n  <servicedir>{}</servicedir>",
        services.display()
    );
    start_bus(dir, bus_type, &body).unwrap_or_else(|e| panic!("dbus-daemon: {e}"))
}

#[test]
fn session_activation_file_is_read_by_dbus_daemon() {
    let file = check_activation_file(SESSION_ACTIVATION);
    let unit = parse_key_file(&read_repo(USER_UNIT)).expect("user unit parses");
    assert_eq!(
        single(&file, "D-BUS Service", "Exec"),
        single(&unit, "Service", "ExecStart")
    );
    assert_eq!(
        format!(
            "systemd/{}",
            single(&file, "D-BUS Service", "SystemdService")
        ),
        USER_UNIT
    );
    let dir = TempDir::new().expect("tempdir");
    let bus = bus_with_service_file(
        dir.path(),
        "session",
        SESSION_ACTIVATION,
        "org.overdub.Overdub1.service",
    );
    let names = activatable_names(&bus);
    assert!(names.contains(&format!("\"{BUS_NAME}\"")), "{names}");
}

#[test]
fn system_activation_file_is_read_by_dbus_daemon() {
    let file = check_activation_file(SYSTEM_ACTIVATION);
    let unit = parse_key_file(&read_repo(SYSTEM_UNIT)).expect("system unit parses");
    assert_eq!(
        single(&file, "D-BUS Service", "Exec"),
        single(&unit, "Service", "ExecStart")
    );
    assert_eq!(
        single(&file, "D-BUS Service", "User"),
        single(&unit, "Service", "User")
    );
    assert_eq!(
        format!(
            "systemd/{}",
            single(&file, "D-BUS Service", "SystemdService")
        ),
        SYSTEM_UNIT
    );
    // The system bus only accepts the file under the bus name, as it is installed.
    let dir = TempDir::new().expect("tempdir");
    let bus = bus_with_service_file(
        dir.path(),
        "system",
        SYSTEM_ACTIVATION,
        "org.overdub.Overdub1.service",
    );
    let names = activatable_names(&bus);
    assert!(names.contains(&format!("\"{BUS_NAME}\"")), "{names}");
}
