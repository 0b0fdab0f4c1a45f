//! The agent bootstrap kit in `manifests/aws/`: the systemd unit and the cloud-init user
//! data, and their copies inside the CloudFormation template.
//!
//! What is checked, and with what:
//! - the unit with `systemd-analyze verify` (systemd 252 of Debian 12) in a scratch root that
//!   has the system's units, a stub `docker.service` and an executable at the `ExecStart`
//!   path; any warning fails the test (verify exits 0 on an unparsable value, so its stderr
//!   must be empty, and a broken copy proves it does warn). Then the directives that matter
//!   (restart, kill mode, ordering, journald) one by one.
//! - the user data with `cloud-init schema` (cloud-init 22.4 of Debian 12), then its parts:
//!   the unit it installs is the file above, the env file defines what the unit reads, the
//!   kubeconfig (rendered) loads as a kubeconfig with `asg-batch eks-token` exec auth, the
//!   install script passes `sh -n`, and runcmd starts Docker and the agent.
//!
//! Not checked here: booting an instance with it (nothing boots under moto), the real
//! `aws` CLI, or the agent's behaviour across a restart under systemd.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

fn read(rel: &str) -> String {
    let path = support::repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const UNIT: &str = "manifests/aws/asg-batch-agent.service";
const USER_DATA: &str = "manifests/aws/user-data.yaml";

/// `(section, key)` → values, in order (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

/// Runs `systemd-analyze verify` on `unit_text` installed as `asg-batch-agent.service` in a
/// scratch root; returns (success, stderr).
fn systemd_verify(unit_text: &str) -> (bool, String) {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(r.join("usr/local/bin")).expect("mkdir");
    std::fs::create_dir_all(r.join("usr/lib/systemd")).expect("mkdir");
    // The distribution's units (targets the unit is ordered against), copied.
    let status = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/system"))
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::write(
        etc.join("docker.service"),
        "[Unit]\nDescription=stub Docker\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("write");
    std::fs::copy(
        env!("CARGO_BIN_EXE_asg-batch"),
        r.join("usr/local/bin/asg-batch"),
    )
    .expect("binary");
    let unit = etc.join("asg-batch-agent.service");
    std::fs::write(&unit, unit_text).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("--man=no")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_warning() {
    let unit = read(UNIT);
    let (ok, stderr) = systemd_verify(&unit);
    assert!(
        ok && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    // The check is not vacuous: a bad value is reported (on stderr, exit status 0).
    let (_, stderr) = systemd_verify(&unit.replace("KillMode=process", "KillMode=sometimes"));
    assert!(
        stderr.contains("kill mode"),
        "a broken unit is reported: {stderr:?}"
    );
}

#[test]
fn the_unit_restarts_the_agent_and_spares_running_jobs() {
    let unit = parse_unit(&read(UNIT));
    let get = |s: &str, k: &str| -> Vec<&str> {
        unit.get(&(s.to_string(), k.to_string()))
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    };
    let words = |s: &str, k: &str| -> Vec<String> {
        get(s, k)
            .iter()
            .flat_map(|v| v.split_whitespace().map(String::from))
            .collect()
    };
    assert_eq!(get("Service", "Restart"), ["on-failure"]);
    // Only the agent's main process gets the stop signal: Docker's containers (children of
    // dockerd) and the process executor's jobs (in this unit's cgroup) keep running.
    assert_eq!(get("Service", "KillMode"), ["process"]);
    assert!(words("Unit", "Requires").contains(&"docker.service".into()));
    assert!(words("Unit", "After").contains(&"docker.service".into()));
    assert_eq!(get("Service", "StandardOutput"), ["journal"]);
    assert_eq!(get("Service", "StandardError"), ["journal"]);
    assert_eq!(
        get("Service", "EnvironmentFile"),
        ["/etc/asg-batch/agent.env"]
    );
    assert_eq!(get("Install", "WantedBy"), ["multi-user.target"]);
    let exec = get("Service", "ExecStart");
    assert_eq!(exec.len(), 1);
    let argv: Vec<&str> = exec[0].split_whitespace().collect();
    assert_eq!(
        argv,
        [
            "/usr/local/bin/asg-batch",
            "agent",
            "--compute-environment",
            "$ASG_BATCH_COMPUTE_ENVIRONMENT",
            "$ASG_BATCH_AGENT_ARGS"
        ]
    );
    // The flag exists on the binary.
    let help = Command::new(env!("CARGO_BIN_EXE_asg-batch"))
        .args(["agent", "--help"])
        .output()
        .expect("asg-batch agent --help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--compute-environment"));
}

fn write_files(doc: &Value) -> BTreeMap<String, (String, String)> {
    doc["write_files"]
        .as_sequence()
        .expect("write_files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                (
                    f["content"].as_str().expect("content").to_string(),
                    f["permissions"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// The user data with sample values where CloudFormation puts its parameters.
fn rendered_user_data() -> String {
    let mut text = read(USER_DATA);
    for (k, v) in [
        ("${ComputeEnvironment}", "cloud"),
        ("${AgentArgs}", "--idle-polls 6"),
        ("${AWS::Region}", "eu-west-1"),
        (
            "${ClusterEndpoint}",
            "https://ABC.gr7.eu-west-1.eks.amazonaws.com",
        ),
        ("${ClusterCertificateAuthority}", "Q0EgYnVuZGxl"),
        ("${ClusterName}", "prod"),
        ("${AgentBinaryBucket}", "artifacts"),
        ("${AgentBinaryKey}", "asg-batch/0.1.0/asg-batch"),
    ] {
        text = text.replace(k, v);
    }
    assert!(!text.contains("${"), "an unknown placeholder: {text}");
    text
}

fn cloud_init_schema(path: &Path) -> (bool, String) {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path)
        .output()
        .expect("cloud-init (Debian package cloud-init; run `make test-deps`)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_user_data_is_valid_cloud_config_that_installs_the_unit_and_its_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("user-data.yaml");
    std::fs::write(&path, rendered_user_data()).expect("write");
    let (ok, out) = cloud_init_schema(&path);
    assert!(ok, "cloud-init schema: {out}");
    // Not vacuous: a misspelt key of a write_files entry is refused (cloud-init 22.4 lets
    // unknown top-level keys pass, so the check covers the modules' own schemas).
    std::fs::write(
        &path,
        rendered_user_data().replacen("    permissions:", "    permission:", 1),
    )
    .expect("write");
    let (ok, out) = cloud_init_schema(&path);
    assert!(!ok, "cloud-init schema accepts a broken config: {out}");

    let text = rendered_user_data();
    assert!(text.starts_with("#cloud-config\n"));
    let doc: Value = serde_yaml::from_str(&text).expect("YAML");
    let files = write_files(&doc);

    // The unit it installs is manifests/aws/asg-batch-agent.service, byte for byte.
    let (unit, _) = &files["/etc/systemd/system/asg-batch-agent.service"];
    assert_eq!(unit, &read(UNIT));

    // The env file defines what the unit reads, and KUBECONFIG names the file written.
    let (env, _) = &files["/etc/asg-batch/agent.env"];
    let env: BTreeMap<&str, &str> = env
        .lines()
        .map(|l| l.split_once('=').expect("KEY=value"))
        .collect();
    assert_eq!(env["ASG_BATCH_COMPUTE_ENVIRONMENT"], "cloud");
    assert_eq!(env["ASG_BATCH_AGENT_ARGS"], "--idle-polls 6");
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    let kubeconfig_path = env["KUBECONFIG"];
    let (kubeconfig, mode) = &files[kubeconfig_path];
    assert_eq!(mode, "0600");

    // The kubeconfig loads, authenticating by `asg-batch eks-token` (the instance role).
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).expect("a kubeconfig");
    let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
    assert_eq!(
        cluster.server.as_deref(),
        Some("https://ABC.gr7.eu-west-1.eks.amazonaws.com")
    );
    let exec = kc.auth_infos[0]
        .auth_info
        .as_ref()
        .and_then(|a| a.exec.as_ref())
        .expect("exec auth");
    assert_eq!(exec.command.as_deref(), Some("/usr/local/bin/asg-batch"));
    assert_eq!(
        exec.args.as_deref(),
        Some(
            &[
                "eks-token",
                "--cluster-name",
                "prod",
                "--region",
                "eu-west-1"
            ]
            .map(String::from)[..]
        )
    );
    assert_eq!(kc.current_context.as_deref(), Some("asg-batch-agent"));

    // The install script is valid sh.
    let (script, mode) = &files["/usr/local/sbin/asg-batch-install"];
    assert_eq!(mode, "0755");
    let script_path = dir.path().join("install.sh");
    std::fs::write(&script_path, script).expect("write");
    let sh = Command::new("sh")
        .arg("-n")
        .arg(&script_path)
        .output()
        .expect("sh");
    assert!(
        sh.status.success(),
        "{}",
        String::from_utf8_lossy(&sh.stderr)
    );
    assert!(script.contains(r#"aws s3 cp --region "eu-west-1" "s3://$bucket/$key""#));
    // Run (its paths moved into the scratch dir, `aws s3 cp` a stub copying from a local
    // "bucket"), it installs asg-batch and the shim beside it when KEY-shim is there, and
    // asg-batch alone (saying so) when it is not.
    let (installed, said) = run_install(script, &["asg-batch", "asg-batch-shim"]);
    assert_eq!(installed, ["asg-batch", "asg-batch-shim"], "{said}");
    let (installed, said) = run_install(script, &["asg-batch"]);
    assert_eq!(installed, ["asg-batch"], "{said}");
    assert!(
        said.contains("process jobs run under asg-batch shim"),
        "{said}"
    );

    // runcmd installs the binary, then starts Docker and the agent.
    let runcmd: Vec<Vec<&str>> = doc["runcmd"]
        .as_sequence()
        .expect("runcmd")
        .iter()
        .map(|c| {
            c.as_sequence()
                .expect("argv form")
                .iter()
                .map(|a| a.as_str().expect("string"))
                .collect()
        })
        .collect();
    assert_eq!(
        runcmd,
        [
            vec!["/usr/local/sbin/asg-batch-install"],
            vec!["systemctl", "daemon-reload"],
            vec!["systemctl", "enable", "--now", "docker.service"],
            vec!["systemctl", "enable", "--now", "asg-batch-agent.service"],
        ]
    );
}

/// Runs the install script with `/usr/local/bin` moved into a scratch directory and a stub
/// `aws` whose `s3 cp s3://artifacts/KEY DEST` copies `bucket/<file name of KEY>` (the rendered
/// key is `asg-batch/0.1.0/asg-batch`); `objects` are the bucket's files (executables
/// printing `--version`). Returns the files installed and what the script printed.
fn run_install(script: &str, objects: &[&str]) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = dir.path().join("bin");
    let bucket = dir.path().join("bucket");
    let stubs = dir.path().join("stubs");
    for d in [&bin, &bucket, &stubs] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let executable = |path: &Path, text: &str| {
        std::fs::write(path, text).expect("write");
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    };
    for object in objects {
        executable(&bucket.join(object), "#!/bin/sh\necho 0.1.0\n");
    }
    // aws s3 cp --region R s3://BUCKET/KEY DEST
    executable(
        &stubs.join("aws"),
        &format!(
            "#!/bin/sh\nsrc=\"{}/$(basename \"$5\")\"\n[ -f \"$src\" ] || {{ echo \"stub aws: $5: not found\" >&2; exit 1; }}\ncp \"$src\" \"$6\"\n",
            bucket.display()
        ),
    );
    let script = script.replace("/usr/local/bin", &bin.display().to_string());
    let path = dir.path().join("install.sh");
    std::fs::write(&path, script).expect("write");
    let out = Command::new("sh")
        .arg(&path)
        .env(
            "PATH",
            format!(
                "{}:{}",
                stubs.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("sh");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the install script failed: {said}");
    let mut installed: Vec<String> = std::fs::read_dir(&bin)
        .expect("bin")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    installed.sort();
    (installed, said)
}

/// fleet.yaml carries user-data.yaml verbatim as its launch template's `Fn::Sub`, and
/// agent-policy.json as its instance role's inline policy.
#[test]
fn the_fleet_template_embeds_the_kit_unchanged() {
    let fleet: Value = serde_yaml::from_str(&read("manifests/aws/fleet.yaml"))
        .expect("fleet.yaml is YAML (short-form tags parse as tagged values)");
    let resources = &fleet["Resources"];
    let user_data = &resources["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
        ["Fn::Sub"];
    assert_eq!(user_data.as_str(), Some(read(USER_DATA).as_str()));
    let policies = resources["InstanceRole"]["Properties"]["Policies"]
        .as_sequence()
        .expect("Policies");
    let inline = policies
        .iter()
        .find(|p| p["PolicyName"] == "asg-batch-agent")
        .expect("the agent policy");
    let inline: serde_json::Value =
        serde_json::to_value(&inline["PolicyDocument"]).expect("as JSON");
    let file: serde_json::Value =
        serde_json::from_str(&read("manifests/aws/iam/agent-policy.json")).expect("JSON");
    assert_eq!(inline, file);
    let group = &resources["Group"]["Properties"];
    assert_eq!(group["MinSize"].as_str(), Some("0"));
    assert!(group.get("DesiredCapacity").is_none());
}
