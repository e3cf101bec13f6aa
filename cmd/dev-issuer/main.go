// Command dev-issuer is a throwaway OpenID Connect issuer for trying the
// service with tokens on a workstation: discovery, a JWKS and a
// client-credentials token endpoint on a loopback address, with one client
// that holds the export app role. Its keys live only in memory and change on
// every start. It is for local use only (`AUTH=oidc make run` starts it);
// never point a deployment at it.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "loopback address to listen on")
	audience := flag.String("audience", "api://bulkexport", `the "aud" of issued tokens`)
	clientID := flag.String("client-id", "local-client", "the client id of the one client")
	secret := flag.String("client-secret", "local-secret", "that client's secret")
	role := flag.String("role", "BulkData.Export", "the app role in that client's tokens")
	flag.Parse()

	iss, err := oidcissuer.New(oidcissuer.Options{
		Addr:     *addr,
		Audience: *audience,
		Clients: map[string]oidcissuer.Client{
			*clientID: {Secret: *secret, Claims: oidcissuer.Claims{"roles": []string{*role}}},
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dev-issuer:", err)
		os.Exit(1)
	}
	defer iss.Close()
	fmt.Printf("dev-issuer: issuer %s, token endpoint %s, client %s\n", iss.URL, iss.TokenURL(), *clientID)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}
