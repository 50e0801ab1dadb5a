use super::*;

fn parse_ok(text: &str) -> Clusterfile {
    match Clusterfile::parse(text) {
        Ok(cf) => cf,
        Err(e) => panic!("expected to parse, got: {e}"),
    }
}

fn parse_err(text: &str) -> String {
    match Clusterfile::parse(text) {
        Ok(cf) => panic!("expected an error, parsed: {cf:?}"),
        Err(e) => e.to_string(),
    }
}

const V2: &str = r#"
apiVersion: sealer.io/v2
kind: Cluster
metadata: {name: demo}
spec:
  image: etcd:v1
  env: [A=1, B="two words", L=x, L=y]
  ssh: {user: root, passwd: s3cret, port: "2222"}
  hosts:
    - {ips: [10.0.0.2, 10.0.0.3-10.0.0.4], roles: [master]}
    - ips: [10.0.0.5]
      roles: [node, db]
      ssh: {user: ops, port: 22}
      env: [A=host-a]
      labels: {ssd: true}
      taints: ["dedicated=db:NoSchedule"]
"#;

#[test]
fn v2_cluster_resolves_hosts_roles_ssh_merge_and_defaults() {
    let c = parse_ok(V2).into_cluster().unwrap();
    assert_eq!(c.name, "demo");
    assert_eq!(c.image.as_deref(), Some("etcd:v1"));
    assert_eq!(c.data_root, Path::new(DEFAULT_DATA_ROOT));
    assert_eq!(c.rootfs(), Path::new("/var/lib/sealer/data/demo/rootfs"));
    let ips: Vec<String> = c.hosts.iter().map(|h| h.ip.to_string()).collect();
    assert_eq!(ips, ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
    assert_eq!(c.master0().ip.to_string(), "10.0.0.2");
    assert_eq!(c.masters().len(), 3);
    assert_eq!(c.nodes().len(), 1);
    let node = &c.hosts[3];
    assert_eq!(node.ssh.user, "ops");
    assert_eq!(node.ssh.port, 22);
    assert_eq!(
        node.ssh.password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(node.labels.get("ssd").map(String::as_str), Some("true"));
    assert_eq!(c.hosts[0].ssh.port, 2222);
    assert_eq!(c.env[1], ("B".to_string(), "two words".to_string()));
}

#[test]
fn password_never_appears_in_debug_or_display() {
    let cf = parse_ok(V2);
    let debug = format!("{cf:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    assert!(debug.contains("Secret(***)"));
    assert_eq!(Secret::new("x").to_string(), "***");
    let flags = ClusterFlags {
        masters: Some("10.0.0.2".into()),
        password: Some(Secret::new("hunter2")),
        ..Default::default()
    };
    assert!(!format!("{flags:?} {:?}", from_flags(&flags).unwrap()).contains("hunter2"));
}

#[test]
fn env_precedence_cluster_then_host_then_sealer_variables() {
    let c = parse_ok(V2).into_cluster().unwrap();
    let rootfs = c.rootfs();
    let get = |env: &[(String, String)], k: &str| {
        env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    let master = host_env(&c, &c.hosts[0], &rootfs);
    assert_eq!(get(&master, "A").as_deref(), Some("1"));
    assert_eq!(
        get(&master, "L").as_deref(),
        Some("x y"),
        "repeated key is a list"
    );
    let node = host_env(&c, &c.hosts[3], &rootfs);
    assert_eq!(
        get(&node, "A").as_deref(),
        Some("host-a"),
        "host env overrides cluster env"
    );
    assert_eq!(get(&node, "SEALER_CLUSTER").as_deref(), Some("demo"));
    assert_eq!(
        get(&node, "SEALER_ROOTFS").as_deref(),
        Some("/var/lib/sealer/data/demo/rootfs")
    );
    assert_eq!(get(&node, "SEALER_MASTER0").as_deref(), Some("10.0.0.2"));
    assert_eq!(
        get(&node, "SEALER_MASTERS").as_deref(),
        Some("10.0.0.2 10.0.0.3 10.0.0.4")
    );
    assert_eq!(get(&node, "SEALER_NODES").as_deref(), Some("10.0.0.5"));
    assert_eq!(get(&node, "SEALER_HOST_IP").as_deref(), Some("10.0.0.5"));
    assert_eq!(get(&node, "SEALER_HOST_ROLES").as_deref(), Some("node db"));
    // Order: first appearance, SEALER_* last.
    assert_eq!(node[0].0, "A");
    assert_eq!(node.last().unwrap().0, "SEALER_HOST_ROLES");
}

#[test]
fn sealer_variables_win_over_user_env_of_the_same_name() {
    let c = parse_ok(&V2.replace("A=1,", "SEALER_CLUSTER=evil, A=1,"))
        .into_cluster()
        .unwrap();
    let env = host_env(&c, &c.hosts[0], Path::new("/r"));
    let values: Vec<&str> = env
        .iter()
        .filter(|(k, _)| k == "SEALER_CLUSTER")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, ["demo"]);
}

#[test]
fn old_v1alpha1_form_gives_masters_then_nodes() {
    let text = r#"
apiVersion: zlink.aliyun.com/v1alpha1
kind: Cluster
metadata: {name: old}
spec:
  image: kubernetes:v1.19.8
  provider: BAREMETAL
  ssh: {passwd: pw, pk: "", pkPasswd: ""}
  network: {podCIDR: 100.64.0.0/10}
  masters: {ipList: [192.168.0.2, 192.168.0.3]}
  nodes: {ipList: [192.168.0.4], count: "0"}
"#;
    let cf = parse_ok(text);
    assert!(
        cf.notes.iter().any(|n| n.contains("spec.network")),
        "{:?}",
        cf.notes
    );
    let c = cf.into_cluster().unwrap();
    assert_eq!(c.masters().len(), 2);
    assert_eq!(c.nodes()[0].ip.to_string(), "192.168.0.4");
    assert_eq!(c.hosts[0].ssh.private_key, None, "empty pk counts as unset");
    assert_eq!(c.hosts[0].ssh.user, "root");
    assert_eq!(c.hosts[0].ssh.port, 22);
}

#[test]
fn cloud_providers_and_count_only_hosts_are_refused_naming_the_feature() {
    let ali = parse_err("apiVersion: sealer.aliyun.com/v1alpha1\nkind: Cluster\nspec:\n  provider: ALI_CLOUD\n  masters: {count: 3}\n");
    assert!(
        ali.contains("provider: ALI_CLOUD is not supported"),
        "{ali}"
    );
    assert!(ali.contains("document 1 (Cluster"), "{ali}");
    let e = Clusterfile::parse(
        "apiVersion: sealer.io/v1\nkind: Cluster\nspec:\n  provider: CONTAINER\n",
    )
    .unwrap_err();
    assert_eq!(e.unsupported_feature(), Some("provider: CONTAINER"));
    let count = parse_err(
        "apiVersion: sealer.aliyun.com/v1alpha1\nkind: Cluster\nspec:\n  masters: {count: 3}\n",
    );
    assert!(
        count.contains("hosts by count (spec.masters.count: 3)"),
        "{count}"
    );
    let v2count = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {count: 3, role: [master]}\n");
    assert!(v2count.contains("hosts by count"), "{v2count}");
}

#[test]
fn errors_name_document_index_kind_line_and_field() {
    let text = "apiVersion: sealer.io/v1\nkind: Plugin\nmetadata: {name: p}\nspec: {type: SHELL, action: post-install, data: x}\n---\napiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2], roles: [master], ssh: {port: \"abc\"}}\n";
    let e = parse_err(text);
    assert_eq!(
        e,
        "document 2 (Cluster, line 6): spec.hosts[0].ssh.port: `abc` is not a port number (1-65535)"
    );
    let dup = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2], roles: [master]}\n    - {ips: [10.0.0.1-10.0.0.3], roles: [node]}\n");
    assert!(
        dup.contains(
            "spec.hosts[1].ips[0]: 10.0.0.2 is listed twice (first at spec.hosts[0].ips[0])"
        ),
        "{dup}"
    );
    let nomaster = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2], roles: [node]}\n");
    assert!(
        nomaster.contains("spec.hosts: no host has the role master"),
        "{nomaster}"
    );
    let mixed = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    - {ips: [10.0.0.2], roles: [master]}\n    - {ips: ['fd00::2'], roles: [node]}\n");
    assert!(
        mixed.contains("spec.hosts[1].ips[0]: fd00::2 is not of the same address family"),
        "{mixed}"
    );
    let port = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  ssh: {port: 70000}\n  hosts:\n    - {ips: [10.0.0.2], roles: [master]}\n");
    assert!(
        port.contains("spec.ssh.port: `70000` is not a port number"),
        "{port}"
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_with_their_path() {
    let typo = parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hsots: []\n");
    assert!(
        typo.contains("document 1 (Cluster, line 1): spec: unknown field `hsots`"),
        "{typo}"
    );
    let ty = parse_err(
        "apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  hosts:\n    ips: [10.0.0.2]\n",
    );
    assert!(
        ty.contains("spec.hosts: invalid type: map, expected a sequence"),
        "{ty}"
    );
    let kind = parse_err("apiVersion: v1\nkind: Pod\n");
    assert!(
        kind.contains("document 1 (Pod, line 1): kind: unknown kind `Pod`"),
        "{kind}"
    );
    let no_kind = parse_err("apiVersion: v1\nmetadata: {}\n");
    assert!(no_kind.contains("kind: missing"), "{no_kind}");
}

#[test]
fn bad_env_names_and_items_are_refused() {
    let e = parse_err(&V2.replace("A=1,", "docker-dir=/d,"));
    assert!(
        e.contains("spec.env[0]: `docker-dir` is not a valid environment variable name"),
        "{e}"
    );
    let e = parse_err(&V2.replace("A=1,", "novalue,"));
    assert!(e.contains("spec.env[0]: `novalue` is not KEY=VALUE"), "{e}");
}

#[test]
fn invalid_yaml_reports_line_and_explains_alias_syntax() {
    let e =
        parse_err("apiVersion: sealer.io/v2\nkind: Cluster\nspec:\n  ssh:\n    passwd: ******\n");
    assert!(e.starts_with("invalid YAML at line 5"), "{e}");
    assert!(e.contains("quote it"), "{e}");
}

#[test]
fn plugins_normalise_both_phase_spellings_and_selectors() {
    let text = r#"
apiVersion: sealer.aliyun.com/v1alpha1
kind: Plugin
metadata: {name: old}
spec:
  type: SHELL
  action: PostInstall|PostJoin
  'on': master
  data: echo hi
---
apiVersion: sealer.io/v1
kind: Plugin
metadata: {name: new}
spec:
  type: SHELL
  action: pre-init-host|post-install
  scope: master | db
  data: echo hi
---
apiVersion: sealer.io/v1
kind: Plugin
metadata: {name: labels}
spec: {type: SHELL, action: PreInit, on: "ssd=true", data: x}
---
apiVersion: sealer.io/v1
kind: Plugin
metadata: {name: ips}
spec: {type: SHELL, action: PreInit, on: "10.0.0.3-10.0.0.5", data: x}
---
apiVersion: sealer.io/v1
kind: Plugin
metadata: {name: HOSTNAME}
spec:
  action: PreInit
  data: |
    10.0.0.2 master-0   # first
    10.0.0.5 node-0
"#;
    let cf = parse_ok(&format!("{V2}---{text}"));
    let c = cf.into_cluster().unwrap();
    let p = |name: &str| c.plugins.iter().find(|p| p.name == name).unwrap();
    assert_eq!(p("old").phases, [Phase::PostInstall, Phase::PostJoin]);
    assert_eq!(p("new").phases, [Phase::PreInitHost, Phase::PostInstall]);
    assert_eq!(p("labels").phases, [Phase::PreInitHost]);
    let ips = |hosts: Vec<&Host>| hosts.iter().map(|h| h.ip.to_string()).collect::<Vec<_>>();
    // Old `on: master` applies to a cluster-level phase too: all masters.
    assert_eq!(ips(p("old").targets(&c, Phase::PostInstall)).len(), 3);
    // New `scope` applies to host phases only; cluster phases run on master0.
    assert_eq!(ips(p("new").targets(&c, Phase::PostInstall)), ["10.0.0.2"]);
    assert_eq!(ips(p("new").targets(&c, Phase::PreInitHost)).len(), 4);
    assert!(p("new").targets(&c, Phase::PostInitHost).is_empty());
    assert_eq!(
        ips(p("labels").targets(&c, Phase::PreInitHost)),
        ["10.0.0.5"]
    );
    assert_eq!(
        ips(p("ips").targets(&c, Phase::PreInitHost)),
        ["10.0.0.3", "10.0.0.4", "10.0.0.5"]
    );
    match &p("HOSTNAME").kind {
        PluginKind::Hostname { names } => {
            assert_eq!(names.len(), 2);
            assert_eq!(names[0].1, "master-0");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unsupported_plugin_types_and_unknown_phases_are_refused() {
    let e = Clusterfile::parse("apiVersion: sealer.io/v1\nkind: Plugin\nmetadata: {name: l}\nspec: {type: LABEL, action: PostInstall, data: '1.2.3.4 a=b'}\n").unwrap_err();
    assert_eq!(e.unsupported_feature(), Some("Plugin type LABEL"));
    let e = parse_err("apiVersion: sealer.io/v1\nkind: Plugin\nmetadata: {name: s}\nspec: {type: SHELL, action: PostBoot, data: x}\n");
    assert!(e.contains("spec.action: `PostBoot` is not a phase"), "{e}");
}

#[test]
fn configs_validate_paths_and_merge_yaml() {
    let text = "apiVersion: sealer.io/v1\nkind: Config\nmetadata: {name: c}\nspec:\n  path: etc/app.yaml\n  strategy: merge\n  data: |\n    a: {b: 2}\n";
    let cf = parse_ok(text);
    let config = &cf.configs[0];
    assert_eq!(config.strategy, ConfigStrategy::Merge);
    let out = config.render(Some("a: {b: 1, c: 3}\nd: 4\n")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(v["a"]["b"], serde_yaml::Value::from(2));
    assert_eq!(v["a"]["c"], serde_yaml::Value::from(3));
    assert_eq!(v["d"], serde_yaml::Value::from(4));
    for bad in ["/etc/passwd", "../x", "etc/../../x", ""] {
        let e = parse_err(&text.replace("etc/app.yaml", &format!("'{bad}'")));
        assert!(e.contains("spec.path"), "{bad}: {e}");
    }
    let e =
        Clusterfile::parse(&text.replace("strategy: merge", "process: value|toJson")).unwrap_err();
    assert_eq!(e.unsupported_feature(), Some("Config spec.process"));
}

#[test]
fn kubeadm_documents_are_kept_opaque_with_a_note() {
    let cf = parse_ok(&format!("{V2}---\napiVersion: kubeadm.k8s.io/v1beta3\nkind: ClusterConfiguration\nnetworking: {{podSubnet: 10.0.0.0/8}}\n"));
    assert_eq!(cf.opaque.len(), 1);
    assert_eq!(cf.opaque[0].kind, "ClusterConfiguration");
    assert!(
        cf.notes
            .iter()
            .any(|n| n.contains("document 2 (ClusterConfiguration")),
        "{:?}",
        cf.notes
    );
}

#[test]
fn host_keys_pin_by_public_key_or_fingerprint() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghi comment";
    let text = format!("{}  hostKeys:\n    10.0.0.3: \"{key}\"\n", V2);
    let c = parse_ok(&text).into_cluster().unwrap();
    match &c.hosts[1].host_key {
        Some(HostKeyPin::PublicKey { algorithm, blob }) => {
            assert_eq!(algorithm, "ssh-ed25519");
            assert!(HostKeyPin::parse(key).unwrap().matches(blob));
        }
        other => panic!("{other:?}"),
    }
    assert!(c.hosts[0].host_key.is_none());
    let e = parse_err(&format!("{V2}  hostKeys:\n    10.9.9.9: \"{key}\"\n"));
    assert!(
        e.contains("spec.hostKeys.10.9.9.9: 10.9.9.9 is not a host of this cluster"),
        "{e}"
    );
    // Fingerprint of the blob above, computed independently.
    let blob = crate::host_key::base64_decode(
        "AAAAC3NzaC1lZDI1NTE5AAAAIAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghi",
    )
    .unwrap();
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&blob);
    let pin = HostKeyPin::Sha256(digest.into());
    assert!(pin.matches(&blob));
    assert!(!pin.matches(b"other"));
}

#[test]
fn flags_build_the_same_model_with_ranges_and_defaults() {
    let flags = ClusterFlags {
        masters: Some("10.0.0.2-10.0.0.4".into()),
        nodes: Some("10.0.0.8,10.0.0.9".into()),
        user: Some("ops".into()),
        pk: Some("/k".into()),
        port: Some(2222),
        env: vec!["A=1".into()],
        ..Default::default()
    };
    let c = from_flags(&flags).unwrap();
    assert_eq!(c.name, DEFAULT_CLUSTER_NAME);
    assert_eq!(c.masters().len(), 3);
    assert_eq!(c.nodes().len(), 2);
    assert_eq!(c.master0().ip.to_string(), "10.0.0.2");
    assert_eq!(c.hosts[4].ssh.port, 2222);
    assert_eq!(c.hosts[4].ssh.user, "ops");
    assert_eq!(c.env, [("A".to_string(), "1".to_string())]);
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    let base = ClusterFlags {
        masters: Some("10.0.0.2".into()),
        ..Default::default()
    };
    let err = |f: ClusterFlags| from_flags(&f).unwrap_err().to_string();
    assert!(err(ClusterFlags::default()).starts_with("--masters: give at least one master"));
    assert!(err(ClusterFlags {
        nodes: Some("10.0.0.2".into()),
        ..base.clone()
    })
    .contains("--nodes item 1: 10.0.0.2 is listed twice"));
    assert!(err(ClusterFlags {
        nodes: Some("bad".into()),
        ..base.clone()
    })
    .starts_with("--nodes: `bad`"));
    assert!(err(ClusterFlags {
        port: Some(0),
        ..base.clone()
    })
    .starts_with("--port"));
    assert!(err(ClusterFlags {
        env: vec!["x-y=1".into()],
        ..base.clone()
    })
    .starts_with("--env[0]"));
    assert!(err(ClusterFlags {
        cluster_name: Some("../x".into()),
        ..base.clone()
    })
    .starts_with("--cluster-name"));
    assert!(err(ClusterFlags {
        nodes: Some("fd00::1".into()),
        ..base
    })
    .contains("same address family"));
}

#[test]
fn flags_parse_through_clap() {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ClusterFlags,
    }
    let cli = Cli::try_parse_from([
        "x",
        "-m",
        "10.0.0.2",
        "-n",
        "10.0.0.3-10.0.0.4",
        "-u",
        "u",
        "-p",
        "pw",
        "--pk",
        "/k",
        "--pk-passwd",
        "pp",
        "--port",
        "22",
        "-e",
        "A=1",
        "-e",
        "B=2",
        "--cluster-name",
        "c",
    ])
    .unwrap();
    let c = from_flags(&cli.flags).unwrap();
    assert_eq!(c.hosts.len(), 3);
    assert_eq!(
        c.hosts[0].ssh.password.as_ref().map(Secret::expose),
        Some("pw")
    );
    assert_eq!(c.env.len(), 2);
    assert_eq!(c.name, "c");
}

#[test]
fn data_root_and_name_are_checked_because_they_become_paths() {
    let e = parse_err(&V2.replace("image: etcd:v1", "image: etcd:v1\n  dataRoot: relative/dir"));
    assert!(
        e.contains("spec.dataRoot: `relative/dir` must be an absolute path"),
        "{e}"
    );
    let e = parse_err(&V2.replace("name: demo", "name: ../etc"));
    assert!(e.contains("metadata.name"), "{e}");
    let c = parse_ok(&V2.replace("image: etcd:v1", "image: etcd:v1\n  dataRoot: /data/sealer"))
        .into_cluster()
        .unwrap();
    assert_eq!(c.rootfs(), Path::new("/data/sealer/demo/rootfs"));
}

#[test]
fn the_local_registry_port_and_ha_act_its_other_fields_are_noted_and_an_external_one_is_refused() {
    let text = r#"
apiVersion: sealer.io/v2
kind: Cluster
spec:
  hosts:
    - {ips: [10.0.0.2, 10.0.0.3], roles: [master]}
    - {ips: [10.0.0.4], roles: [node]}
  registry:
    localRegistry: {domain: sea.hub, port: 5001, ha: false}
"#;
    let cf = parse_ok(text);
    assert!(
        cf.notes
            .iter()
            .any(|n| n.contains("spec.registry.localRegistry.domain")),
        "{:?}",
        cf.notes
    );
    let c = cf.into_cluster().unwrap();
    assert_eq!(c.registry.port, 5001);
    let serving: Vec<String> = c
        .registry_hosts()
        .iter()
        .map(|h| h.ip.to_string())
        .collect();
    assert_eq!(serving, ["10.0.0.2"], "ha: false serves from master0 only");

    let ha = parse_ok(&text.replace("ha: false", "ha: true"))
        .into_cluster()
        .unwrap();
    let serving: Vec<String> = ha
        .registry_hosts()
        .iter()
        .map(|h| h.ip.to_string())
        .collect();
    assert_eq!(serving, ["10.0.0.2", "10.0.0.3"]);

    let external = text.replace(
        "localRegistry: {domain: sea.hub, port: 5001, ha: false}",
        "externalRegistry: {domain: harbor.example}",
    );
    let cluster = parse_ok(&external).into_cluster().unwrap();
    let ext = cluster.registry.external.clone().unwrap();
    assert_eq!(ext.address, "harbor.example");
    assert_eq!(ext.endpoint(), "https://harbor.example");
    assert_eq!(ext.path_for("docker.io"), "docker.io");
    assert!(cluster.registry_hosts().is_empty(), "no host serves images");

    let full = text.replace(
        "localRegistry: {domain: sea.hub, port: 5001, ha: false}",
        "externalRegistry: {domain: 10.1.0.9, port: 8443, prefix: /team/mirror/, username: u, password: p, insecure: true}",
    );
    let ext = parse_ok(&full)
        .into_cluster()
        .unwrap()
        .registry
        .external
        .unwrap();
    assert_eq!(ext.endpoint(), "http://10.1.0.9:8443");
    assert_eq!(
        ext.repository("127.0.0.1:5000", "library/foo"),
        "team/mirror/127.0.0.1_5000/library/foo"
    );
    assert_eq!(
        (ext.username.as_deref(), ext.password.as_deref()),
        (Some("u"), Some("p"))
    );
    assert!(
        !format!("{ext:?}").contains("\"p\""),
        "the password is not printed"
    );
    // A recorded Clusterfile has no password: the user name alone means `sealer login`'s.
    let recorded = text.replace(
        "localRegistry: {domain: sea.hub, port: 5001, ha: false}",
        "externalRegistry: {domain: h.example, username: u}",
    );
    let ext = parse_ok(&recorded)
        .into_cluster()
        .unwrap()
        .registry
        .external
        .unwrap();
    assert_eq!((ext.username, ext.password), (None, None));

    for (bad, field) in [
        ("externalRegistry: {port: 5000}", "externalRegistry.domain"),
        (
            "externalRegistry: {domain: 'https://h.example'}",
            "externalRegistry.domain",
        ),
        (
            "externalRegistry: {domain: h.example, port: 0}",
            "externalRegistry.port",
        ),
        (
            "externalRegistry: {domain: h.example, prefix: Team}",
            "externalRegistry.prefix",
        ),
        (
            "externalRegistry: {domain: h.example, password: p}",
            "externalRegistry.username",
        ),
    ] {
        let text = text.replace(
            "localRegistry: {domain: sea.hub, port: 5001, ha: false}",
            bad,
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
    let bad_port = text.replace("port: 5001", "port: 70000");
    let err = parse(&bad_port).unwrap_err().to_string();
    assert!(err.contains("is not a port"), "{err}");
}

#[test]
fn a_hook_whose_scope_matches_no_host_is_refused_naming_the_hosts() {
    let text = r#"
apiVersion: sealer.io/v2
kind: Cluster
spec:
  hosts:
    - {ips: [10.0.0.2], roles: [master]}
---
apiVersion: sealer.io/v1
kind: Plugin
metadata: {name: nodes-only}
spec:
  type: SHELL
  action: post-init-host
  scope: node
  data: echo hi
"#;
    let err = parse_err(text);
    assert!(err.contains("spec.scope"), "{err}");
    assert!(err.contains("matches no host"), "{err}");
    assert!(err.contains("10.0.0.2 [master]"), "{err}");
    // A cluster-level hook runs on master0 whatever its scope says.
    parse_ok(&text.replace("post-init-host", "post-install"));
}
