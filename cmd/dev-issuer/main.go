// Command dev-issuer is a throwaway OpenID Connect issuer for trying the
// service with tokens on a workstation: discovery, a JWKS and a
// client-credentials token endpoint on a loopback address, with one client
// that holds the export app role. The client authenticates with its secret or,
// given -client-jwks, with a SMART Backend Services client assertion signed by
// one of those keys (what the SMART bulk-data-client sends). Its own keys live
// only in memory and change on every start. It is for local use only
// (`AUTH=oidc make run` starts it); never point a deployment at it.
//
// -new-client-key DIR writes an ES384 key pair for the client and exits:
// DIR/private.jwk.json (the SMART client's privateKey) and
// DIR/public.jwks.json (for -client-jwks).
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/azfhir/bulkexport/tests/oidcissuer"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "loopback address to listen on")
	audience := flag.String("audience", "api://bulkexport", `the "aud" of issued tokens`)
	clientID := flag.String("client-id", "local-client", "the client id of the one client")
	secret := flag.String("client-secret", "local-secret", "that client's secret (empty: the client cannot use one)")
	jwksFile := flag.String("client-jwks", "", "a JWKS file of that client's public keys (RS384 or ES384): the client may then authenticate with a signed client assertion (private_key_jwt)")
	scopes := flag.String("scopes", "system/*.read system/*.rs", "the scopes that client may get, space separated (a SMART client asks for some of them)")
	role := flag.String("role", "BulkData.Export", "the app role in that client's tokens, which lets it export every type whatever its scopes (empty: no role, so only the scopes count)")
	newKey := flag.String("new-client-key", "", "write an ES384 key pair for the client to DIR/private.jwk.json and DIR/public.jwks.json, and exit")
	flag.Parse()

	if *newKey != "" {
		if err := writeClientKey(*newKey); err != nil {
			fmt.Fprintln(os.Stderr, "dev-issuer:", err)
			os.Exit(1)
		}
		return
	}
	client := oidcissuer.Client{Secret: *secret, Scopes: strings.Fields(*scopes)}
	if *role != "" {
		client.Claims = oidcissuer.Claims{"roles": []string{*role}}
	}
	if *jwksFile != "" {
		data, err := os.ReadFile(*jwksFile)
		if err == nil {
			client.Keys, err = oidcissuer.ParseClientJWKS(data)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "dev-issuer: -client-jwks %s: %v\n", *jwksFile, err)
			os.Exit(1)
		}
	}
	iss, err := oidcissuer.New(oidcissuer.Options{
		Addr:     *addr,
		Audience: *audience,
		Clients:  map[string]oidcissuer.Client{*clientID: client},
		Logf:     log.New(os.Stderr, "dev-issuer: ", log.LstdFlags).Printf,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dev-issuer:", err)
		os.Exit(1)
	}
	defer iss.Close()
	auth := "client secret"
	if client.Keys != nil {
		auth += fmt.Sprintf(" or a client assertion signed with a key of %s", *jwksFile)
	}
	fmt.Printf("dev-issuer: issuer %s, token endpoint %s, client %s (%s), scopes %q\n",
		iss.URL, iss.TokenURL(), *clientID, auth, *scopes)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
}

// writeClientKey writes a new ES384 key pair into dir: the private JWK, with
// the alg and kid a SMART client signs with, readable by the owner only, and
// a JWKS of its public half.
func writeClientKey(dir string) error {
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return err
	}
	jwk := jose.JSONWebKey{Key: priv, KeyID: hex.EncodeToString(id), Algorithm: string(jose.ES384), Use: "sig"}
	privJSON, err := json.MarshalIndent(jwk, "", "  ")
	if err != nil {
		return err
	}
	pubJSON, err := json.MarshalIndent(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk.Public()}}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	privPath, pubPath := filepath.Join(dir, "private.jwk.json"), filepath.Join(dir, "public.jwks.json")
	if err := os.WriteFile(privPath, append(privJSON, '\n'), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(pubPath, append(pubJSON, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("dev-issuer: wrote %s (kid %s, ES384) and %s\n", privPath, jwk.KeyID, pubPath)
	return nil
}
