// Command ferretdb-embedded runs a MongoDB-wire-compatible test server for
// ci/backends.sh: FerretDB v1 used as a library, storing its data in SQLite
// files under one directory (the default) or in a PostgreSQL database.
//
// We build our own tiny main instead of FerretDB's cmd/ferretdb because that
// command expects version files that are generated at release time and are
// not part of the Go module, so a plain `go install` of it panics at start-up.
//
// Usage:
//
//	ferretdb-embedded -listen 127.0.0.1:27017 -data-dir .backends/ferretdb-data
//	ferretdb-embedded -listen 127.0.0.1:27017 -postgresql-url postgres://user@127.0.0.1:5432/ferretdb
//
// It stops cleanly (closing the listener, open connections and the SQLite
// databases) on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27017", "TCP address to accept MongoDB wire protocol connections on")
	dataDir := flag.String("data-dir", "ferretdb-data", "directory that holds the SQLite database files (created if missing)")
	pgURL := flag.String("postgresql-url", "", "store the data in this PostgreSQL database instead of SQLite files")
	debug := flag.Bool("debug", false, "log at debug level")
	flag.Parse()

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if err := run(*listen, *dataDir, *pgURL, logger); err != nil {
		logger.Error("ferretdb-embedded failed", "error", err)
		os.Exit(1)
	}
}

func run(listen, dataDir, pgURL string, logger *slog.Logger) error {
	config := ferretdb.Config{
		Listener: ferretdb.ListenerConfig{TCP: listen},
		Logger:   logger,
	}
	where := pgURL
	if pgURL != "" {
		config.Handler = "postgresql"
		config.PostgreSQLURL = pgURL
	} else {
		dir, err := filepath.Abs(dataDir)
		if err != nil {
			return fmt.Errorf("data directory %q: %w", dataDir, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create data directory: %w", err)
		}
		// The SQLite handler wants a "file:" URI naming an existing
		// directory, with a trailing slash.
		config.Handler = "sqlite"
		config.SQLiteURL = "file:" + dir + "/"
		where = dir
	}

	server, err := ferretdb.New(&config)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	logger.Info("ferretdb-embedded starting", "listen", listen, "handler", config.Handler, "data", where, "pid", os.Getpid())
	if err := server.Run(ctx); err != nil {
		return err
	}
	logger.Info("ferretdb-embedded stopped")
	return nil
}
