// Starts the real mock provider and the real gateway for the Go SDK tests, as the Python and
// TypeScript suites do: free loopback ports, a temporary directory, keys made through the
// admin API. The binaries come from TOLLGATE_BIN and TOLLGATE_LOADTEST_BIN.
package sdkgo

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const adminToken = "go-admin-token-0123456789"

type stack struct {
	url     string
	gateway *exec.Cmd
	mock    *exec.Cmd
}

func binary(t *testing.T, variable string) string {
	path := os.Getenv(variable)
	if _, err := os.Stat(path); path == "" || err != nil {
		t.Fatalf("%s must name a built binary (tests/run-all sets it)", variable)
	}
	return path
}

func start(t *testing.T, cmd *exec.Cmd) string {
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	found := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(out)
		for scanner.Scan() {
			if _, address, ok := strings.Cut(scanner.Text(), "listening on http://"); ok {
				found <- address
			}
		}
	}()
	select {
	case address := <-found:
		return address
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s did not start", cmd.Path)
		return ""
	}
}

func startStack(t *testing.T) *stack {
	dir := t.TempDir()
	mock := exec.Command(binary(t, "TOLLGATE_LOADTEST_BIN"), "mock", "--listen", "127.0.0.1:0")
	mock.Env = append(os.Environ(), "MOCK_PROVIDER_KEY=sk-provider-go")
	mockAddress := start(t, mock)
	card, err := os.ReadFile(filepath.Join("..", "..", "gateway", "config", "rates.example.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rates.toml"), card, 0o600); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`rate_card = "rates.toml"
[server]
listen = "127.0.0.1:0"
[[provider]]
name = "openai"
kind = "openai"
base_url = "http://%[1]s/v1"
api_key_env = "GO_PROVIDER_KEY"
[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "http://%[1]s"
api_key_env = "GO_PROVIDER_KEY"
[[team]]
name = "research"
[[project]]
name = "chatbot"
team = "research"
[[allocation]]
name = "open"
project = "chatbot"
[[allocation]]
name = "tiny"
project = "chatbot"
budget = { limit = "0.000001", period = "day" }
`, mockAddress)
	if err := os.WriteFile(filepath.Join(dir, "tollgate.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	gateway := exec.Command(binary(t, "TOLLGATE_BIN"), "serve", "--config", filepath.Join(dir, "tollgate.toml"))
	gateway.Env = append(os.Environ(), "GO_PROVIDER_KEY=sk-provider-go", "TOLLGATE_ADMIN_TOKEN="+adminToken)
	address := start(t, gateway)
	s := &stack{url: "http://" + address, gateway: gateway, mock: mock}
	t.Cleanup(func() {
		_ = s.gateway.Process.Signal(syscall.SIGTERM)
		_ = s.gateway.Wait()
		_ = s.mock.Process.Kill()
		_ = s.mock.Wait()
	})
	return s
}

func (s *stack) key(t *testing.T, allocation string) string {
	body, _ := json.Marshal(map[string]string{"allocation": allocation, "user": "go"})
	request, _ := http.NewRequest(http.MethodPost, s.url+"/admin/v1/keys", bytes.NewReader(body))
	request.Header.Set("authorization", "Bearer "+adminToken)
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	raw, _ := io.ReadAll(response.Body)
	if response.StatusCode != http.StatusCreated {
		t.Fatalf("key: %d %s", response.StatusCode, raw)
	}
	var created struct{ Key string }
	if err := json.Unmarshal(raw, &created); err != nil {
		t.Fatal(err)
	}
	return created.Key
}
