//! A running stack for end-to-end tests: the mock provider and the real gateway, each its own
//! process on a free loopback port, with config, keys and events in a temporary directory.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{self, Answer};
use crate::{TempDir, loadtest_bin, repo_root, tollgate_bin};

/// The admin token of test stacks.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The provider key the mock demands, handed to the gateway through the environment.
pub const PROVIDER_KEY: &str = "sk-provider-secret-42";

/// A child process killed when dropped.
pub struct Process {
    child: Child,
    /// Where it listens.
    pub address: SocketAddr,
}

impl Process {
    /// Starts `command` and waits (up to a minute) for it to print `... listening on http://ADDR`.
    pub fn spawn(mut command: Command) -> Process {
        command.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some((_, address)) = line.trim().split_once("listening on http://") {
                    let _ = sender.send(address.to_owned());
                    break;
                }
                line.clear();
            }
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        let address = match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => address.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                panic!("{command:?} did not start listening ({status})");
            }
        };
        Process { child, address }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        status.success()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mock provider, alone.
pub fn start_mock() -> Process {
    start_mock_with(&[])
}

/// The mock provider answering as `behaviour` says (`--error-percent 100`, `--first-byte-ms
/// 200`, ...): another deployment for routing tests.
pub fn start_mock_with(behaviour: &[&str]) -> Process {
    let mut command = Command::new(loadtest_bin().unwrap());
    command
        .args(["mock-provider", "--listen", "127.0.0.1:0"])
        .args(behaviour)
        .env("MOCK_PROVIDER_KEY", PROVIDER_KEY);
    Process::spawn(command)
}

/// `tollgate-loadtest run` against the gateway at `gateway`, its books read from the Parquet
/// files under `parquet` and its report written to `out`, with the stacks' admin token; the
/// caller adds the scenario and options and runs it.
pub fn harness(gateway: SocketAddr, parquet: &Path, out: &Path) -> Command {
    let mut command = Command::new(loadtest_bin().unwrap());
    command
        .args(["run", "--gateway"])
        .arg(format!("http://{gateway}"))
        .arg("--parquet")
        .arg(parquet)
        .arg("--out")
        .arg(out)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    command
}

/// Requests a mock at `address` has served (each one reached a "model").
pub fn mock_requests_at(address: SocketAddr) -> u64 {
    let answer = http::request(address, "GET", "/mock/stats", &[], b"");
    answer.json()["requests"].as_u64().unwrap()
}

/// Mock provider plus gateway.
///
/// Fields drop in order: the gateway stops before the files it writes are removed.
pub struct Stack {
    gateway: Option<Process>,
    /// The mock provider.
    pub mock: Process,
    /// Files of this stack (config, state, events).
    pub dir: TempDir,
    /// More environment for the gateway's process (a fault shim, say).
    env: Vec<(String, String)>,
}

/// The organisation every stack starts with: one team, project and allocation per test need.
pub const ORG: &str = r#"
[[team]]
name = "research"
org = "acme"

[[project]]
name = "chatbot"
team = "research"

[[allocation]]
name = "open"
project = "chatbot"
cost_center = "cc-1"

[[allocation]]
name = "openai-only"
project = "chatbot"
cost_center = "cc-2"
models = ["openai/*"]
"#;

/// A second team beside [`ORG`]'s `research`: `support`, its project `helpdesk` and its
/// allocation `tickets` (for what one team may do to another's).
pub const SUPPORT_ORG: &str = "
[[team]]
name = \"support\"
org = \"acme\"

[[project]]
name = \"helpdesk\"
team = \"support\"

[[allocation]]
name = \"tickets\"
project = \"helpdesk\"
";

/// The teams and projects the bundled load scenarios put their allocations under (as `tollgate
/// demo` configures them); add to [`ORG`], whose team `research` it uses.
pub const FLEET_ORG: &str = r#"
[[team]]
name = "platform"
org = "acme"

[[team]]
name = "support"
org = "acme"

[[project]]
name = "research-agents"
team = "research"

[[project]]
name = "platform-ci"
team = "platform"

[[project]]
name = "support-bot"
team = "support"
"#;

/// llama.cpp's server with the tiny test model, when `TOLLGATE_LLAMA_SERVER` and
/// `TOLLGATE_LLAMA_MODEL` name them (`tests/run-all` builds both). Without them the test is
/// skipped with a loud message, except under `CI=true`, where that is a failure.
pub fn start_llama() -> Option<Process> {
    let (Ok(server), Ok(model)) = (
        std::env::var("TOLLGATE_LLAMA_SERVER"),
        std::env::var("TOLLGATE_LLAMA_MODEL"),
    ) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: TOLLGATE_LLAMA_SERVER and TOLLGATE_LLAMA_MODEL must name the llama.cpp server and model (tests/run-all builds them)"
        );
        eprintln!(
            "\n*** SKIPPED: no llama.cpp server (set TOLLGATE_LLAMA_SERVER and TOLLGATE_LLAMA_MODEL, or run tests/run-all) ***\n"
        );
        return None;
    };
    // llama-server takes a fixed port: borrow a free one from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Some(llama_on(&server, &model, port))
}

/// llama.cpp's server on `port` (a server killed and started again where it was), once
/// healthy; `None` as [`start_llama`] says.
pub fn start_llama_on(port: u16) -> Option<Process> {
    let server = std::env::var("TOLLGATE_LLAMA_SERVER").ok()?;
    let model = std::env::var("TOLLGATE_LLAMA_MODEL").ok()?;
    Some(llama_on(&server, &model, port))
}

fn llama_on(server: &str, model: &str, port: u16) -> Process {
    let child = Command::new(server)
        .args([
            "-m",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        // One thread (spinning workers starve a 2-core machine), embeddings on, no prompt
        // cache (so usage is exact and repeatable), a fixed model name.
        .args([
            "-t",
            "1",
            "--embeddings",
            "--pooling",
            "mean",
            "--no-cache-prompt",
        ])
        .args(["--alias", "tiny-random-llama", "--no-webui"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let process = Process { child, address };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // While it loads the model, llama-server may refuse, reset or answer 503.
        if http::probe(address, "/health") == Some(200) {
            return process;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "llama-server did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Apache Kafka (KRaft, each node broker and controller in one process) with its data in a
/// temporary directory, from the jars in `TOLLGATE_KAFKA_LIBS` (tests/run-all fetches them):
/// one node, or a cluster of three for replication and failover. Without the jars the test is
/// skipped loudly, except under `CI=true`, where that fails.
pub struct Kafka {
    nodes: Vec<Node>,
    dir: TempDir,
    libs: String,
    /// `host:port,...` of the brokers.
    pub bootstrap: String,
}

struct Node {
    process: Option<Process>,
    properties: PathBuf,
    log: PathBuf,
    address: SocketAddr,
}

impl Kafka {
    /// Starts one broker, or `None` (loudly) when no jars are configured outside CI.
    pub fn start() -> Option<Kafka> {
        Kafka::cluster(1)
    }

    /// Starts `n` nodes forming one cluster (topics replicated `n` times, `min.insync.replicas`
    /// a majority), or `None` (loudly) when no jars are configured outside CI.
    pub fn cluster(n: usize) -> Option<Kafka> {
        let Ok(libs) = std::env::var("TOLLGATE_KAFKA_LIBS") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: TOLLGATE_KAFKA_LIBS must name the Kafka broker's jars (tests/run-all fetches them)"
            );
            eprintln!(
                "\n*** SKIPPED: no Kafka broker (set TOLLGATE_KAFKA_LIBS, or run tests/run-all) ***\n"
            );
            return None;
        };
        let dir = TempDir::new("kafka").unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (port(), port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect();
        let replication = n.min(3);
        let min_isr = replication / 2 + 1;
        let classpath = format!("{libs}/*");
        let uuid = Command::new("java")
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "random-uuid"])
            .output()
            .unwrap();
        let uuid = String::from_utf8_lossy(&uuid.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let mut nodes = Vec::new();
        for (i, (broker, controller)) in ports.iter().enumerate() {
            let node_dir = dir.path().join(format!("node{}", i + 1));
            std::fs::create_dir_all(&node_dir).unwrap();
            let quorum = if n == 1 {
                format!("controller.quorum.bootstrap.servers=127.0.0.1:{controller}\n")
            } else {
                format!("controller.quorum.voters={}\n", voters.join(","))
            };
            let config = format!(
                "process.roles=broker,controller\nnode.id={}\n{quorum}\
                 listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{broker}\ncontroller.listener.names=CONTROLLER\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\nlog.dirs={}\n\
                 offsets.topic.replication.factor={replication}\ntransaction.state.log.replication.factor={replication}\n\
                 transaction.state.log.min.isr={min_isr}\ndefault.replication.factor={replication}\n\
                 min.insync.replicas={min_isr}\ngroup.initial.rebalance.delay.ms=0\nnum.partitions=4\n",
                i + 1,
                node_dir.join("data").display()
            );
            let properties = node_dir.join("server.properties");
            std::fs::write(&properties, config).unwrap();
            let mut format = Command::new("java");
            format.args(["-cp", &classpath, "kafka.tools.StorageTool", "format"]);
            if n == 1 {
                format.arg("--standalone");
            }
            let formatted = format
                .args(["-t", &uuid, "-c"])
                .arg(&properties)
                .output()
                .unwrap();
            assert!(
                formatted.status.success(),
                "{}",
                String::from_utf8_lossy(&formatted.stderr)
            );
            nodes.push(Node {
                process: None,
                properties,
                log: node_dir.join("broker.log"),
                address: format!("127.0.0.1:{broker}").parse().unwrap(),
            });
        }
        let bootstrap = nodes
            .iter()
            .map(|node| node.address.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut kafka = Kafka {
            nodes,
            dir,
            libs,
            bootstrap,
        };
        // A quorum of several nodes forms only once they all run: start them all, then wait.
        for i in 0..n {
            kafka.spawn(i);
        }
        for i in 0..n {
            kafka.wait(i);
        }
        Some(kafka)
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(&node.log).unwrap();
        let child = Command::new("java")
            .args([
                "-Xmx512m",
                "-cp",
                &format!("{}/*", self.libs),
                "kafka.Kafka",
            ])
            .arg(&node.properties)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.process = Some(Process {
            child,
            address: node.address,
        });
    }

    fn wait(&self, i: usize) {
        let address = self.nodes[i].address;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the Kafka broker at {address} did not start (see {})",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the (first) broker (SIGKILL).
    pub fn kill(&mut self) {
        self.kill_node(0);
    }

    /// Starts the (first) broker again on the same data and ports.
    pub fn restart(&mut self) {
        self.restart_node(0);
    }

    /// Kills every node (SIGKILL): the cluster is gone.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }

    /// Starts every node again on the same data and ports (all before waiting for any: a
    /// quorum forms only once they run).
    pub fn restart_all(&mut self) {
        self.kill_all();
        for i in 0..self.nodes.len() {
            self.spawn(i);
        }
        for i in 0..self.nodes.len() {
            self.wait(i);
        }
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill_node(&mut self, i: usize) {
        drop(self.nodes[i].process.take());
    }

    /// Starts node `i` again on the same data and ports.
    pub fn restart_node(&mut self, i: usize) {
        self.kill_node(i);
        self.spawn(i);
        self.wait(i);
    }
}

impl Stack {
    /// Starts a stack whose config is the standard providers plus `org` (teams, projects,
    /// allocations) and `server` lines for `[server]`.
    pub fn start(name: &str, org: &str, server: &str) -> Stack {
        Stack::start_with(name, org, server, "", &[])
    }

    /// As [`Stack::start`], with `providers` (more `[[provider]]` tables) and `models` priced
    /// on the card in force.
    pub fn start_with(
        name: &str,
        org: &str,
        server: &str,
        providers: &str,
        models: &[&str],
    ) -> Stack {
        let mut stack = Stack::prepared(name, org, server, providers, models);
        stack.launch();
        stack
    }

    /// As [`Stack::start_with`], its files written and its mock started but the gateway not
    /// yet: for a test that readies something under [`Stack::path`] first (a small file system
    /// for a folder), then calls [`Stack::launch`].
    pub fn prepared(
        name: &str,
        org: &str,
        server: &str,
        providers: &str,
        models: &[&str],
    ) -> Stack {
        let dir = TempDir::new(name).unwrap();
        let mock = start_mock();
        // The example card, plus prices for the test-only providers (appended to the version in
        // force, the last one).
        let mut card = String::new();
        std::fs::File::open(repo_root().join("gateway/config/rates.example.toml"))
            .unwrap()
            .take(1 << 20)
            .read_to_string(&mut card)
            .unwrap();
        for model in [
            "slow/m",
            "dead/m",
            "azure/prod-4o",
            "bedrock/anthropic.claude-3-haiku-20240307-v1:0",
        ]
        .iter()
        .chain(models)
        {
            card.push_str(&format!(
                "\n[[version.model]]\nname = \"{model}\"\ninput_per_mtok = \"1\"\noutput_per_mtok = \"2\"\n"
            ));
        }
        std::fs::write(dir.path().join("rates.toml"), card).unwrap();
        // A port nothing listens on: bound, then released.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = format!(
            r#"rate_card = "rates.toml"

[server]
listen = "127.0.0.1:0"
{server}

[[provider]]
name = "openai"
kind = "openai"
base_url = "http://{mock}/v1"
api_key_env = "TEST_OPENAI_KEY"

[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{mock}"
api_key_env = "TEST_ANTHROPIC_KEY"

# The mock answering as Azure OpenAI: deployments, api-key header, api-version query.
[[provider]]
name = "azure"
kind = "azure"
base_url = "http://{mock}"
api_key_env = "TEST_OPENAI_KEY"
api_version = "2024-10-21"

# The mock answering as AWS Bedrock (Converse), SigV4-signed with the AWS_* variables.
[[provider]]
name = "bedrock"
kind = "bedrock"
region = "us-east-1"
base_url = "http://{mock}"

# The mock answering as the Gemini API (x-goog-api-key) and as Vertex AI (an OAuth bearer).
[[provider]]
name = "gemini"
kind = "gemini"
base_url = "http://{mock}"
api_key_env = "TEST_OPENAI_KEY"

[[provider]]
name = "vertex"
kind = "gemini"
project = "acme-prod"
location = "us-central1"
base_url = "http://{mock}"
api_key_env = "TEST_OPENAI_KEY"

# Same mock, short patience: for timeout tests.
[[provider]]
name = "slow"
kind = "openai"
base_url = "http://{mock}/v1"
api_key_env = "TEST_OPENAI_KEY"
first_byte_timeout_ms = 300
idle_timeout_ms = 300

[[provider]]
name = "dead"
kind = "openai"
base_url = "http://{dead}/v1"
connect_timeout_ms = 1000

{providers}

[[alias]]
name = "fast"
model = "openai/gpt-4o-mini"
{org}"#,
            mock = mock.address
        );
        std::fs::write(dir.path().join("tollgate.toml"), config).unwrap();
        Stack {
            dir,
            mock,
            gateway: None,
            env: Vec::new(),
        }
    }

    /// Starts the gateway of a stack made by [`Stack::prepared`].
    pub fn launch(&mut self) {
        self.gateway = Some(Process::spawn(self.serve_command()));
    }

    /// `tollgate serve` on this stack's config and environment, not started: for a test that
    /// starts it itself (with more arguments, or to see it refuse).
    pub fn serve_command(&self) -> Command {
        let mut command = Command::new(tollgate_bin().unwrap());
        command
            .args(["serve", "--config"])
            .arg(self.dir.path().join("tollgate.toml"))
            .env("TEST_OPENAI_KEY", PROVIDER_KEY)
            .env("TEST_ANTHROPIC_KEY", PROVIDER_KEY)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env(
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            )
            .env_remove("AWS_SESSION_TOKEN")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs `tollgate ARGS` against this stack's admin API, with its admin token.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(tollgate_bin().unwrap())
            .args(args)
            .env("TOLLGATE_URL", format!("http://{}", self.address()))
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    }

    /// Sets a variable in the gateway's environment from its next start on.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Kills the gateway with SIGKILL (no shutdown, no last sync), leaving it down.
    pub fn kill(&mut self) {
        drop(self.gateway.take());
    }

    /// Starts the gateway again on the same files (after [`Stack::kill`]).
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// The gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("gateway running").pid()
    }

    /// The gateway's address.
    pub fn address(&self) -> SocketAddr {
        self.gateway.as_ref().expect("gateway running").address
    }

    /// Stops the gateway gracefully (SIGTERM): in-flight calls drain, events are synced.
    pub fn stop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            assert!(gateway.terminate(), "gateway did not exit cleanly");
        }
    }

    /// Kills the gateway with SIGKILL (no shutdown, no last sync) and starts it again.
    pub fn kill_and_restart(&mut self) {
        drop(self.gateway.take());
        self.launch();
    }

    /// Stops and starts the gateway on the same files.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Calls the admin API.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        http::request(
            self.address(),
            method,
            path,
            &[("authorization", &auth)],
            body.as_bytes(),
        )
    }

    /// Creates an operator with `role` (and `team`, a team-admin's); returns (secret, id).
    pub fn create_operator(&self, name: &str, role: &str, team: Option<&str>) -> (String, String) {
        let made = self.admin(
            "POST",
            "/admin/v1/operators",
            Some(json!({"name": name, "role": role, "team": team})),
        );
        assert_eq!(made.status, 201, "{}", made.text());
        let made = made.json();
        let secret = made["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("tgo_"), "{made}");
        (secret, made["id"].as_str().unwrap().to_owned())
    }

    /// Creates a key on `allocation` with extra fields; returns (secret, id).
    pub fn create_key(&self, allocation: &str, extra: Value) -> (String, String) {
        let mut body = json!({"allocation": allocation, "user": "ada@acme.example"});
        if let (Some(fields), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            fields.extend(extra.clone());
        }
        let answer = self.admin("POST", "/admin/v1/keys", Some(body));
        assert_eq!(answer.status, 201, "{}", answer.text());
        let value = answer.json();
        (
            value["key"].as_str().unwrap().to_owned(),
            value["id"].as_str().unwrap().to_owned(),
        )
    }

    /// The value of an unlabelled counter or gauge on `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let metrics = http::request(self.address(), "GET", "/metrics", &[], b"").text();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    }

    /// The allocation's spend this period, in nanos, from the live budget table.
    pub fn spent_nanos(&self, allocation: &str) -> u64 {
        spent_nanos_at(self.address(), allocation)
    }

    /// Starts the gateway on this stack's files expecting it to refuse; what it said on stderr.
    pub fn start_refused(&self) -> String {
        let refused = self
            .serve_command()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert!(
            !refused.status.success(),
            "the start was not refused: {said}"
        );
        said
    }

    /// Starts a gateway on this stack's files with `--accept-spend-loss`, apart from the
    /// stack's own (which must be down).
    pub fn start_accepting_spend_loss(&self) -> Process {
        let mut accepting = self.serve_command();
        accepting.arg("--accept-spend-loss");
        Process::spawn(accepting)
    }

    /// Every usage event in the gateway's durable log, in order.
    pub fn events(&self) -> Vec<Value> {
        let dir = self.dir.path().join("events/log");
        match tollgate_sink::log::read(&dir, 0) {
            Ok(records) => records
                .map(|r| serde_json::from_slice(&r.unwrap().1).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Requests the mock provider has served (each one reached a "model").
    pub fn mock_requests(&self) -> u64 {
        mock_requests_at(self.mock.address)
    }

    /// The gateway's folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// The allocation's spend this period, in nanos, from the budget table of the gateway at
/// `address`.
pub fn spent_nanos_at(address: SocketAddr, allocation: &str) -> u64 {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let all = http::request(
        address,
        "GET",
        "/admin/v1/allocations",
        &[("authorization", &auth)],
        b"",
    )
    .json();
    all["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == allocation)
        .map(|a| a["budget"]["spent_nanos"].as_u64().unwrap())
        .unwrap()
}

/// Parses a JSON-lines file.
pub fn read_lines(path: &PathBuf) -> Vec<Value> {
    let mut text = String::new();
    if let Ok(file) = std::fs::File::open(path) {
        file.take(256 << 20).read_to_string(&mut text).unwrap();
    }
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
