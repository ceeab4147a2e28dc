// A protected upstream app behind authbase (Go, net/http only).
//
// The proxy (nginx auth_request, Traefik forwardAuth, Caddy forward_auth) asks authbase
// before every request and passes the signed-in user as X-User-Id / X-User-Email.
//
// SECURITY: this app must be reachable ONLY through the proxy. Anyone who can connect to
// it directly can send any X-User-Id / X-User-Email they like. Keep it on 127.0.0.1 or on
// a private network the proxy alone can reach; never publish its port.
//
// Run: go run main.go       (HOST and PORT env override 127.0.0.1:8080)
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func handler(w http.ResponseWriter, r *http.Request) {
	userID := strings.TrimSpace(r.Header.Get("X-User-Id"))
	email := strings.TrimSpace(r.Header.Get("X-User-Email"))
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if userID == "" || email == "" {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, "401 Unauthorized: no X-User-Id / X-User-Email from the proxy\n")
		return
	}
	fmt.Fprintf(w, "Hello %s (user %s)\n", email, userID)
}

func main() {
	addr := net.JoinHostPort(getenv("HOST", "127.0.0.1"), getenv("PORT", "8080"))
	srv := &http.Server{
		Addr:              addr,
		Handler:           http.HandlerFunc(handler),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Printf("app listening on http://%s", addr)
	log.Fatal(srv.ListenAndServe())
}
