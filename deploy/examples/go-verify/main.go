// Verify authbase's X-User-Assertion with github.com/golang-jwt/jwt/v4 (the version
// Debian packages as golang-github-golang-jwt-jwt-dev; v5 works the same way with its
// WithAudience/WithIssuer parser options) and a small JWKS fetch (Ed25519 keys only,
// which is all authbase publishes).
//
//	go run . JWKS_URL ISSUER AUDIENCE TOKEN
//
// prints the claims as JSON and exits 0, or prints why not and exits 1. In an app, keep
// one Keys per JWKS URL and call Verify with the X-User-Assertion header and the host
// the request was for.
package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

// Keys is a cached JWKS: fetched on first use, again after five minutes, and again (at
// most every ten seconds) when a token names a key id it does not hold.
type Keys struct {
	URL     string
	mu      sync.Mutex
	keys    map[string]ed25519.PublicKey
	fetched time.Time
}

func (k *Keys) fetch() error {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(k.URL)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("JWKS: HTTP %d", resp.StatusCode)
	}
	var set struct {
		Keys []struct {
			Kty, Crv, X, Kid, Alg string
		} `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return fmt.Errorf("JWKS: %w", err)
	}
	keys := map[string]ed25519.PublicKey{}
	for _, j := range set.Keys {
		if j.Kty != "OKP" || j.Crv != "Ed25519" || j.Alg != "EdDSA" {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			continue
		}
		keys[j.Kid] = ed25519.PublicKey(x)
	}
	k.keys, k.fetched = keys, time.Now()
	return nil
}

func (k *Keys) key(kid string) (ed25519.PublicKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	age := time.Since(k.fetched)
	if pk, ok := k.keys[kid]; ok && age < 5*time.Minute {
		return pk, nil
	}
	if k.keys == nil || age > 10*time.Second {
		if err := k.fetch(); err != nil {
			return nil, err
		}
	}
	if pk, ok := k.keys[kid]; ok {
		return pk, nil
	}
	return nil, fmt.Errorf("unknown key id %q", kid)
}

// Claims are authbase's assertion claims.
type Claims struct {
	Email  string   `json:"email"`
	Groups []string `json:"groups,omitempty"`
	Sid    string   `json:"sid"`
	jwt.RegisteredClaims
}

// Leeway is the clock skew allowed on exp, iat and nbf (as the Python and Node examples).
const Leeway = 5 * time.Second

// Verify returns the claims of a valid assertion for audience, or an error.
func (k *Keys) Verify(token, issuer, audience string) (*Claims, error) {
	claims := &Claims{}
	_, err := jwt.ParseWithClaims(token, claims, func(t *jwt.Token) (interface{}, error) {
		kid, _ := t.Header["kid"].(string)
		return k.key(kid)
	},
		jwt.WithValidMethods([]string{"EdDSA"}), // never let the token choose
		// v4 checks the times without leeway; they are checked below with Leeway (v5:
		// jwt.WithLeeway).
		jwt.WithoutClaimsValidation())
	// ParseWithClaims has checked the signature.
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if claims.ExpiresAt == nil {
		return nil, errors.New("no exp claim")
	}
	if !claims.VerifyExpiresAt(now.Add(-Leeway), true) {
		return nil, fmt.Errorf("token is expired by %v", now.Sub(claims.ExpiresAt.Time).Round(time.Second))
	}
	if !claims.VerifyIssuedAt(now.Add(Leeway), false) || !claims.VerifyNotBefore(now.Add(Leeway), false) {
		return nil, errors.New("token used before issued")
	}
	if !claims.VerifyIssuer(issuer, true) {
		return nil, fmt.Errorf("token is from issuer %q, not %q", claims.Issuer, issuer)
	}
	// This app's host: a token for another app is refused.
	if !claims.VerifyAudience(audience, true) {
		return nil, fmt.Errorf("token is for audience %v, not %q", claims.Audience, audience)
	}
	if claims.Subject == "" {
		return nil, errors.New("no sub claim")
	}
	return claims, nil
}

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: go run . JWKS_URL ISSUER AUDIENCE TOKEN")
		os.Exit(2)
	}
	keys := &Keys{URL: os.Args[1]}
	claims, err := keys.Verify(os.Args[4], os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintf(os.Stderr, "rejected: %v\n", err)
		os.Exit(1)
	}
	out, _ := json.Marshal(claims)
	fmt.Println(string(out))
}
