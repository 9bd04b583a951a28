// Command kstatus computes the kstatus health of one Kubernetes object, the
// way Flux (and kpt, cli-utils' status poller) judge readiness. Test tooling
// only: the e2e tests (e2e/src/kstatus.rs) run it, never the product.
//
//	kubectl get deploy/x -o json | kstatus
//	{"status":"Current","message":"Deployment is available. Replicas: 1"}
//
// Reads exactly one object as JSON on stdin and prints one JSON line
// {"status":"InProgress|Current|Failed|Terminating|NotFound|Unknown","message":"..."}
// with exit status 0. Input that is not one JSON object with apiVersion and
// kind, or that status.Compute refuses (a field of the wrong type), is
// reported on stderr with exit status 2.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// One JSON object and nothing after it (json.Valid rejects trailing data).
	if !json.Valid(data) {
		return fmt.Errorf("stdin is not one JSON value")
	}
	u := &unstructured.Unstructured{}
	// Numbers become int64 where integral, as status.Compute expects
	// (observedGeneration, replicas).
	if err := u.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if u.GetAPIVersion() == "" || u.GetKind() == "" {
		return fmt.Errorf("not a Kubernetes object: apiVersion and kind are required")
	}
	res, err := status.Compute(u)
	if err != nil {
		return fmt.Errorf("status.Compute: %w", err)
	}
	line, err := json.Marshal(result{Status: res.Status.String(), Message: res.Message})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", line)
	return err
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < object.json")
		os.Exit(2)
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(2)
	}
}
