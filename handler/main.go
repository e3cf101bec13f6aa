// Command handler is the FHIR Bulk Data $export service. It runs in one of
// two modes over the same engine:
//
//   - Azure Functions custom handler: when the host sets
//     FUNCTIONS_CUSTOMHANDLER_PORT, it serves forwarded HTTP requests and the
//     queue-triggered worker function's invocations on that port.
//   - Standalone: `handler serve -addr 127.0.0.1:7071` serves the HTTP API
//     and runs queue workers in-process, for local runs, containers and tests.
//
// Configuration comes from the environment (app settings); see README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/rs/zerolog"

	"github.com/azfhir/bulkexport/handler/internal/auth"
	"github.com/azfhir/bulkexport/handler/internal/azstore"
	"github.com/azfhir/bulkexport/handler/internal/config"
	"github.com/azfhir/bulkexport/handler/internal/deidconfig"
	"github.com/azfhir/bulkexport/handler/internal/export"
	"github.com/azfhir/bulkexport/handler/internal/fhir"
	"github.com/azfhir/bulkexport/handler/internal/fhirsource"
	"github.com/azfhir/bulkexport/handler/internal/funchost"
	"github.com/azfhir/bulkexport/handler/internal/httpapi"
	"github.com/azfhir/bulkexport/handler/internal/queueworker"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	log := zerolog.New(os.Stdout).With().Timestamp().Str("service", "bulkexport").Logger()
	if err := run(log, os.Args[1:]); err != nil {
		log.Error().Err(err).Msg("handler stopped")
		// stdout only: the Functions host turns stderr lines into errors.
		os.Exit(1)
	}
}

func run(log zerolog.Logger, args []string) error {
	mode := "functions"
	addr := ""
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			fs.SetOutput(os.Stdout)
			fs.StringVar(&addr, "addr", "127.0.0.1:7071", "address to listen on")
			if err := fs.Parse(args[1:]); err != nil {
				return err
			}
			mode = "serve"
		case "version":
			fmt.Println(version)
			return nil
		default:
			return fmt.Errorf("unknown command %q: use `handler serve -addr HOST:PORT`, or run under the Functions host", args[0])
		}
	}

	cfg, err := config.Load(os.Getenv)
	if err != nil {
		return err
	}
	if mode == "functions" {
		if cfg.FunctionsPort == "" {
			return errors.New("FUNCTIONS_CUSTOMHANDLER_PORT is not set: run under the Azure Functions host, or use `handler serve`")
		}
		addr = "127.0.0.1:" + cfg.FunctionsPort
	}
	level, _ := zerolog.ParseLevel(cfg.LogLevel)
	log = log.Level(level).With().Str("mode", mode).Logger()
	log.Info().Fields(cfg.Fields()).Str("version", version).Msg("starting")

	// Bind first: the Functions host probes the port from the start.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	// SIGTERM (a scale-in, a deployment, Ctrl-C) starts a graceful stop:
	// stopping ends when it comes; the contexts of requests and work items
	// (base) end only when EXPORT_SHUTDOWN_GRACE is over, so that what is in
	// flight can finish or hand on first.
	stopping, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	stopping = log.WithContext(stopping)
	base, cancelBase := context.WithCancel(log.WithContext(context.Background()))
	defer cancelBase()

	// Serve at once: until the storage and the engine are ready, every request
	// (the host's readiness probe included) gets a quick 503 instead of a hang.
	var ready atomic.Pointer[http.Handler]
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := ready.Load(); h != nil {
				(*h).ServeHTTP(w, r)
				return
			}
			w.Header().Set("Retry-After", "1")
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write(fhir.NewOutcome("error", "transient", "the service is starting; try again in a moment").JSON())
		}),
		ReadHeaderTimeout: 30 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	app, err := wire(stopping, cfg, log, mode)
	if err != nil {
		_ = srv.Close()
		if stopping.Err() != nil {
			log.Info().Err(err).Msg("stopped while starting")
			return nil
		}
		return err
	}
	ready.Store(&app.handler)
	log.Info().Str("addr", ln.Addr().String()).Msg("listening")

	workersDone := make(chan struct{})
	if app.receiver != nil {
		go func() {
			defer close(workersDone)
			queueworker.Run(stopping, app.receiver, app.engine, queueworker.Options{
				Workers: cfg.Workers, MaxDequeueCount: cfg.MaxDequeueCount, RetryDelay: cfg.VisibilityTimeout,
				Visibility: cfg.RunningVisibility, Grace: cfg.ShutdownGrace, Wake: app.wake,
			})
		}()
	} else {
		close(workersDone)
	}

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-stopping.Done():
	}
	stopSignals() // a second signal ends the process at once
	log.Info().Dur("grace", cfg.ShutdownGrace).Msg("shutting down: taking no new work; work in flight hands on at its next page boundary")
	// Both sides drain at once, each within the grace: the server stops
	// accepting and waits for the requests in flight (worker invocations in
	// Functions mode hand on through stopping); the queue workers stop
	// receiving and wait for their messages.
	grace, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(grace); err != nil {
		// Requests still running: end them. A work item cut short resumes
		// from its last checkpoint on its next delivery.
		log.Warn().Err(err).Msg("the shutdown grace is over; cancelling the requests still running")
		cancelBase()
		_ = srv.Close()
	}
	<-workersDone
	log.Info().Msg("stopped")
	return nil
}

type app struct {
	handler  http.Handler
	engine   *export.Engine
	receiver queueworker.Receiver // standalone mode only
	wake     <-chan struct{}      // standalone mode only: this process enqueued work
}

// wire builds the adapters and the engine from the configuration.
// ctx ends when the process is told to stop: it bounds the start-up, and its
// end asks running work items to hand on (funchost's stop signal).
func wire(ctx context.Context, cfg config.Config, log zerolog.Logger, mode string) (*app, error) {
	var storageCred azcore.TokenCredential
	if cfg.Storage.ConnectionString == "" {
		cred, err := managedIdentity(cfg.Storage.ClientID)
		if err != nil {
			return nil, err
		}
		storageCred = cred
	}
	account, err := azstore.Open(ctx, azstore.Options{
		ConnectionString: cfg.Storage.ConnectionString,
		BlobURL:          cfg.Storage.BlobURL, QueueURL: cfg.Storage.QueueURL, TableURL: cfg.Storage.TableURL,
		Credential: storageCred, Table: cfg.Table, Queue: cfg.Queue,
	})
	if err != nil {
		return nil, fmt.Errorf("open storage: %w", err)
	}
	if err := account.EnsureInfrastructure(ctx); err != nil {
		return nil, fmt.Errorf("prepare storage (table %s, queue %s): %w", cfg.Table, cfg.Queue, err)
	}

	var token fhirsource.TokenSource
	if cfg.FHIRAuth == "azure" {
		cred, err := managedIdentity(cfg.FHIRClientID)
		if err != nil {
			return nil, err
		}
		scope := cfg.FHIRScope
		if scope == "" {
			scope = originScope(cfg.FHIRServerURL)
		}
		token = &entraToken{cred: cred, scope: scope}
	}
	source, err := fhirsource.New(fhirsource.Options{
		BaseURL: cfg.FHIRServerURL, Token: token, UserAgent: "bulkexport/" + version,
		MaxAttempts: cfg.FHIRAttempts, BaseBackoff: cfg.FHIRBackoff, Concurrency: cfg.SourceConcurrency,
	})
	if err != nil {
		return nil, fmt.Errorf("FHIR_SERVER_URL: %w", err)
	}

	set := export.DefaultSettings()
	set.MaxFileBytes, set.BlockBytes = cfg.MaxFileBytes, cfg.BlockBytes
	set.PageSize, set.MemberBatch = cfg.PageSize, cfg.MemberBatch
	set.InvocationBudget, set.Retention = cfg.InvocationBudget, cfg.Retention
	set.SystemTypes = cfg.SystemTypes
	set.Lease, set.StallAfter = cfg.Lease, cfg.StallAfter
	set.MaxActivePerOwner = cfg.MaxJobsPerClient
	set.WindowResources = cfg.WindowResources
	blobs, err := exportBlobs(cfg, account)
	if err != nil {
		return nil, err
	}
	// De-identification configurations live in the export destination
	// account, as in Azure, next to the files they shape.
	set.Anonymizers = deidconfig.New(blobs, cfg.AnonymizationContainer)
	// In the standalone mode the engine's enqueues wake this process's queue
	// loop (a no-op under the Functions host, which polls by itself).
	queue := queueworker.NewNotifier(account.Queue())
	engine := export.New(account.Store(), queue, blobs, source, set, nil)

	verifier, err := auth.New(cfg.AuthConfig())
	if err != nil {
		return nil, err
	}
	if verifier.Mode() == auth.ModeNone {
		log.Warn().Msg("AUTH_MODE=none: the API checks no token and anyone who can reach it may export every patient; for local use only")
	} else {
		// Warm the key cache and say early if the issuer is misconfigured
		// or unreachable; requests retry discovery themselves, so a failure
		// here does not stop the service.
		go func() {
			dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			if err := verifier.Discover(dctx); err != nil {
				log.Warn().Err(err).Msg("the token issuer's discovery failed at start-up; requests will answer 503 until it succeeds")
			}
		}()
	}

	apiOpts := httpapi.Options{
		BaseURL: cfg.BaseURL, TrustForwarded: cfg.TrustForwarded, DefaultContainer: cfg.Container, Retention: cfg.Retention,
		RetryAfter: cfg.RetryAfter, Logger: log, SoftwareVersion: version,
		Auth: verifier, TokenEndpoint: cfg.AuthTokenEndpoint,
		Containers: cfg.Containers, Downloads: cfg.Downloads, SASTTL: cfg.SASTTL,
	}
	if err := apiOpts.Validate(); err != nil {
		return nil, err
	}
	api := httpapi.New(engine, apiOpts)
	a := &app{handler: api, engine: engine}
	if mode == "functions" {
		maxDequeue, err := funchost.MaxDequeueCount(hostJSONPath())
		if err != nil {
			return nil, err
		}
		a.handler = funchost.New(api, engine, maxDequeue, ctx.Done())
	} else {
		a.receiver, a.wake = account.Queue(), queue.Wake()
	}
	return a, nil
}

// exportBlobs is where export files go: the export account (EXPORT_STORAGE)
// when one is set, so that the identity's write role on PHI is scoped to it;
// else the host account. The job table and the queue stay on the host
// account either way.
func exportBlobs(cfg config.Config, host *azstore.Account) (*azstore.Blobs, error) {
	es := cfg.ExportStorage
	if !es.Set() {
		return host.Blobs(), nil
	}
	o := azstore.BlobOptions{ConnectionString: es.ConnectionString, URL: es.BlobURL}
	if es.BlobURL != "" {
		cred, err := managedIdentity(es.ClientID)
		if err != nil {
			return nil, err
		}
		o.Credential = cred
	}
	blobs, err := azstore.OpenBlobs(o)
	if err != nil {
		return nil, fmt.Errorf("open export storage: %w", err)
	}
	return blobs, nil
}

// hostJSONPath is host.json in the app root: the working directory the host
// starts us in, or else the folder of the executable.
func hostJSONPath() string {
	if _, err := os.Stat("host.json"); err == nil {
		return "host.json"
	}
	exe, err := os.Executable()
	if err != nil {
		return "host.json"
	}
	return filepath.Join(filepath.Dir(exe), "host.json")
}

func managedIdentity(clientID string) (azcore.TokenCredential, error) {
	opts := &azidentity.ManagedIdentityCredentialOptions{}
	if clientID != "" {
		opts.ID = azidentity.ClientID(clientID)
	}
	cred, err := azidentity.NewManagedIdentityCredential(opts)
	if err != nil {
		return nil, fmt.Errorf("managed identity: %w", err)
	}
	return cred, nil
}

// entraToken gets Entra ID tokens for the source FHIR server (Azure Health
// Data Services) from an azidentity credential; azidentity caches them.
type entraToken struct {
	cred  azcore.TokenCredential
	scope string
}

func (t *entraToken) Token(ctx context.Context) (string, error) {
	tok, err := t.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{t.scope}})
	if err != nil {
		return "", fmt.Errorf("get a token for %s: %w", t.scope, err)
	}
	return tok.Token, nil
}

// originScope is the Entra ID scope of a FHIR service: its origin + "/.default".
func originScope(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base + "/.default"
	}
	return u.Scheme + "://" + u.Host + "/.default"
}
