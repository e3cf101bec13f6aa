// Command fhir-sample serves a folder of NDJSON files as a strict, read-only FHIR R4 server,
// for local runs and end-to-end tests of the Bulk Data $export service.
//
// Usage:
//
//	fhir-sample -data tests/data/synthea-r4-10 [-addr 127.0.0.1:8080] [-base /fhir] [-search-delay 200ms]
//
// -deletions FILE serves a history with deletions, one "Type/id instant" a line: resources deleted then
// and not updated since are gone from search and read, and GET [Type]/_history lists the DELETEs.
// -no-history serves and declares no history at all.
//
// -search-delay adds latency to every search request (first pages, next pages and
// _summary=count; not metadata or reads), as a remote FHIR server's would: the benchmarks
// use it to show how the export behaves against a slow source.
//
// When it listens it writes one JSON line to stdout with the base URL (base_url), so a test
// can start it with -addr 127.0.0.1:0 and read the port it got. It stops on SIGINT or SIGTERM.
// See package fhirsample for the supported interactions and search parameters.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/azfhir/bulkexport/tests/fhirsample"
)

// config is the command line.
type config struct {
	dataDir      string
	addr         string
	basePath     string
	defaultCount int
	maxCount     int
	searchDelay  time.Duration
	deletions    string // file of "Type/id instant" lines (fhirsample.ParseDeletions)
	noHistory    bool
}

func main() {
	logger := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, logger); err != nil {
		logger.Error("fhir-sample failed", "error", err.Error())
		os.Exit(1)
	}
}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("fhir-sample", flag.ContinueOnError)
	fs.StringVar(&cfg.dataDir, "data", "", "folder of <Type>.ndjson files to serve (required)")
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "listen address HOST:PORT (port 0 picks a free port)")
	fs.StringVar(&cfg.basePath, "base", "/fhir", "path of the FHIR base")
	fs.IntVar(&cfg.defaultCount, "default-count", 50, "page size when a search has no _count")
	fs.IntVar(&cfg.maxCount, "max-count", 1000, "largest page size; a larger _count is capped")
	fs.DurationVar(&cfg.searchDelay, "search-delay", 0, "latency added to every search request, such as 200ms")
	fs.StringVar(&cfg.deletions, "deletions", "", `file of deletions served as history, one "Type/id instant" a line`)
	fs.BoolVar(&cfg.noHistory, "no-history", false, "serve no _history and declare none, as a server without history")
	if err := fs.Parse(args); err != nil {
		return config{}, fmt.Errorf("parse flags: %w", err)
	}
	if cfg.dataDir == "" {
		return config{}, errors.New("fhir-sample: -data is required")
	}
	if cfg.searchDelay < 0 {
		return config{}, fmt.Errorf("fhir-sample: -search-delay %v is negative", cfg.searchDelay)
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("fhir-sample: unexpected arguments %q", fs.Args())
	}
	return cfg, nil
}

// run serves until ctx is cancelled, then shuts down gracefully.
func run(ctx context.Context, cfg config, logger *slog.Logger) error {
	var deletions []fhirsample.Deletion
	if cfg.deletions != "" {
		f, err := os.Open(cfg.deletions)
		if err != nil {
			return fmt.Errorf("read -deletions: %w", err)
		}
		deletions, err = fhirsample.ParseDeletions(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("read -deletions %s: %w", cfg.deletions, err)
		}
	}
	server, err := fhirsample.New(cfg.dataDir, fhirsample.Options{
		Deletions:    deletions,
		NoHistory:    cfg.noHistory,
		BasePath:     cfg.basePath,
		DefaultCount: cfg.defaultCount,
		MaxCount:     cfg.maxCount,
		SearchDelay:  cfg.searchDelay,
	})
	if err != nil {
		return err
	}
	// Loading leaves garbage the size of the data set (hundreds of MB for
	// the benchmark sets). Collect it now, before serving: otherwise the
	// first collection, over the whole heap, lands in the middle of the
	// export a benchmark measures.
	runtime.GC()
	listener, err := new(net.ListenConfig).Listen(ctx, "tcp", cfg.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.addr, err)
	}
	httpServer := &http.Server{Handler: server.Handler(), ReadHeaderTimeout: 10 * time.Second}

	logger.Info("listening",
		"base_url", baseURL(listener.Addr(), server.BasePath()),
		"addr", listener.Addr().String(),
		"data", cfg.dataDir,
		"resources", totalResources(server.Counts()),
		"types", len(server.Counts()))

	serveErr := make(chan error, 1)
	go func() { serveErr <- httpServer.Serve(listener) }()
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return nil
}

// baseURL is the URL clients use to reach the FHIR base at addr. An unspecified listen
// address (all interfaces) is reported as localhost.
func baseURL(addr net.Addr, basePath string) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String() + basePath
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, port) + basePath
}

func totalResources(counts map[string]int) int {
	total := 0
	for _, n := range counts {
		total += n
	}
	return total
}
