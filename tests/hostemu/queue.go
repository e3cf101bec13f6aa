package hostemu

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azqueue/queueerror"
)

const (
	// runningVisibility is how long a dequeued message stays hidden while its
	// invocation runs; it is renewed at half-time (docs §1.6).
	runningVisibility = 10 * time.Minute
	// minPollingInterval is the first idle back-off step.
	minPollingInterval = 100 * time.Millisecond
	// settleTimeout bounds the storage calls that settle a message.
	settleTimeout = 30 * time.Second
)

// listen polls one queue trigger's queue and runs its invocations.
func (h *Host) listen(fn Function, b Binding) {
	defer h.wg.Done()
	qs := h.cfg.Queues
	q := h.queues.NewQueueClient(b.QueueName)
	var (
		mu       sync.Mutex
		inflight int
		freed    = make(chan struct{}, 1)
		running  sync.WaitGroup
	)
	defer running.Wait()
	backoff := minPollingInterval
	idle := func() {
		select {
		case <-h.ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, max(qs.MaxPollingInterval, minPollingInterval))
	}
	for h.ctx.Err() == nil {
		// A new batch is fetched when the invocations in flight are down to
		// newBatchThreshold: at most batchSize+newBatchThreshold run at once.
		mu.Lock()
		n := inflight
		mu.Unlock()
		if n > qs.NewBatchThreshold {
			select {
			case <-freed:
			case <-h.ctx.Done():
			}
			continue
		}
		if h.Err() != nil {
			idle()
			continue
		}
		count, vis := int32(qs.BatchSize), int32(runningVisibility/time.Second)
		resp, err := q.DequeueMessages(h.ctx, &azqueue.DequeueMessagesOptions{NumberOfMessages: &count, VisibilityTimeout: &vis})
		if err != nil {
			if h.ctx.Err() == nil && !queueerror.HasCode(err, queueerror.QueueNotFound) {
				h.logf("hostemu: poll %s: %v", b.QueueName, err)
			}
			idle()
			continue
		}
		if len(resp.Messages) == 0 {
			idle()
			continue
		}
		backoff = minPollingInterval
		for _, m := range resp.Messages {
			mu.Lock()
			inflight++
			mu.Unlock()
			running.Add(1)
			go func() {
				defer running.Done()
				h.process(fn, b, q, m)
				mu.Lock()
				inflight--
				mu.Unlock()
				select {
				case freed <- struct{}{}:
				default:
				}
			}()
		}
	}
}

// message is a dequeued message whose pop receipt changes as it is renewed.
type message struct {
	mu   sync.Mutex
	id   string
	pop  string
	text string
}

func (m *message) receipt() (string, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.id, m.pop
}

// process runs one delivery and settles the message as the Storage Queues
// extension does (docs §1.5).
func (h *Host) process(fn Function, b Binding, q *azqueue.QueueClient, dm *azqueue.DequeuedMessage) {
	msg := &message{id: deref(dm.MessageID), pop: deref(dm.PopReceipt), text: deref(dm.MessageText)}
	dequeueCount := deref(dm.DequeueCount)
	// settling returns a fresh context for the storage calls that settle the
	// message (the invocation may have run for a long time).
	settling := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.WithoutCancel(h.ctx), settleTimeout)
	}

	text := msg.text
	if h.cfg.Queues.MessageEncoding == "base64" {
		raw, err := base64.StdEncoding.DecodeString(msg.text)
		if err != nil {
			// The host never calls the function for such a message.
			h.logf("hostemu: Message decoding has failed! message %s of %s goes to the poison queue", msg.id, b.QueueName)
			settle, cancel := settling()
			defer cancel()
			h.poison(settle, q, b.QueueName, msg)
			return
		}
		text = string(raw)
	}

	inv := Invocation{Function: fn.Name, InvocationID: NewUUID(), MessageID: msg.id, Text: text, DequeueCount: dequeueCount, Started: time.Now()}
	payload, err := BuildQueuePayload(fn.Name, b.Name, text, dm, time.Now())
	if err == nil {
		stop := h.keepHidden(q, msg)
		inv.Status, inv.Logs, err = h.invoke(fn.Name, inv.InvocationID, payload)
		stop()
	}
	inv.Duration = time.Since(inv.Started)
	inv.Succeeded = err == nil
	if err != nil {
		inv.Err = err.Error()
	}
	for _, l := range inv.Logs {
		h.logf("%s[%s]: %s", fn.Name, inv.InvocationID, l)
	}

	h.mu.Lock()
	h.stats.Invocations++
	if inv.Succeeded {
		h.stats.Succeeded++
	} else {
		h.stats.Failed++
	}
	h.invocations = append(h.invocations, inv)
	h.mu.Unlock()

	settle, cancel := settling()
	defer cancel()
	id, pop := msg.receipt()
	switch {
	case inv.Succeeded:
		if _, err := q.DeleteMessage(settle, id, pop, nil); err != nil {
			h.logf("hostemu: delete message %s from %s: %v", id, b.QueueName, err)
		}
	case dequeueCount >= int64(h.cfg.Queues.MaxDequeueCount):
		h.logf("hostemu: %s invocation %s failed on delivery %d of %d (%s); moving message %s to %s-poison",
			fn.Name, inv.InvocationID, dequeueCount, h.cfg.Queues.MaxDequeueCount, inv.Err, id, b.QueueName)
		h.poison(settle, q, b.QueueName, msg)
	default:
		h.logf("hostemu: %s invocation %s failed on delivery %d (%s); visible again in %s",
			fn.Name, inv.InvocationID, dequeueCount, inv.Err, h.cfg.Queues.VisibilityTimeout)
		vis := int32((h.cfg.Queues.VisibilityTimeout + time.Second - 1) / time.Second)
		if _, err := q.UpdateMessage(settle, id, pop, msg.text, &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis}); err != nil {
			h.logf("hostemu: release message %s of %s: %v", id, b.QueueName, err)
		}
	}
}

// poison copies the message text to <queue>-poison (created on demand) and
// deletes the original.
func (h *Host) poison(ctx context.Context, q *azqueue.QueueClient, queue string, msg *message) {
	pq := h.queues.NewQueueClient(queue + "-poison")
	if _, err := pq.Create(ctx, nil); err != nil && !queueerror.HasCode(err, queueerror.QueueAlreadyExists) {
		h.logf("hostemu: create %s-poison: %v", queue, err)
		return
	}
	if _, err := pq.EnqueueMessage(ctx, msg.text, nil); err != nil {
		h.logf("hostemu: copy message %s to %s-poison: %v", msg.id, queue, err)
		return
	}
	id, pop := msg.receipt()
	if _, err := q.DeleteMessage(ctx, id, pop, nil); err != nil {
		h.logf("hostemu: delete poisoned message %s from %s: %v", id, queue, err)
	}
	h.mu.Lock()
	h.stats.Poisoned++
	h.mu.Unlock()
}

// keepHidden renews the message's visibility at half-time while the
// invocation runs. The returned stop waits for the renewer.
func (h *Host) keepHidden(q *azqueue.QueueClient, msg *message) (stop func()) {
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(runningVisibility / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				vis := int32(runningVisibility / time.Second)
				msg.mu.Lock()
				resp, err := q.UpdateMessage(ctx, msg.id, msg.pop, msg.text, &azqueue.UpdateMessageOptions{VisibilityTimeout: &vis})
				if err == nil && resp.PopReceipt != nil {
					msg.pop = *resp.PopReceipt
				}
				msg.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					h.logf("hostemu: renew message %s: %v", msg.id, err)
				}
			}
		}
	}()
	return func() { cancel(); <-done }
}

// invoke POSTs a payload to /<function> and reports the status and the
// handler's Logs; err says why the host would count the invocation failed.
func (h *Host) invoke(function, invocationID string, payload []byte) (int, []string, error) {
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	timeout := h.cfg.FunctionTimeout
	var timedOut bool
	var timer *time.Timer
	var mu sync.Mutex
	base, err := h.workerURL(ctx)
	if err != nil {
		return 0, nil, err
	}
	// The worker serving this invocation: the one killed on timeout.
	h.mu.Lock()
	w := h.cur
	h.mu.Unlock()
	if timeout > 0 {
		timer = time.AfterFunc(timeout, func() {
			mu.Lock()
			timedOut = true
			mu.Unlock()
			h.mu.Lock()
			h.stats.Timeouts++
			h.mu.Unlock()
			h.logf("hostemu: Timeout value of %s exceeded by function '%s' (Id: '%s'); restarting the worker process", timeout, function, invocationID)
			cancel()
			if w != nil {
				w.killFor("functionTimeout exceeded by " + invocationID)
			}
		})
		defer timer.Stop()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/"+function, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Azure-Functions-InvocationId", invocationID)
	req.Header.Set("X-Azure-Functions-HostVersion", HostVersion)
	req.Header.Set("User-Agent", "Azure-Functions-Host/"+HostVersion)
	resp, err := h.client.Do(req)
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if timedOut {
			return 0, nil, fmt.Errorf("functionTimeout %s exceeded", timeout)
		}
		return 0, nil, fmt.Errorf("the worker did not answer: %w", err)
	}
	defer resp.Body.Close()
	// The status is checked before the body is read.
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		logs, _ := parseResult(resp.Header.Get("Content-Type"), body)
		return resp.StatusCode, logs, fmt.Errorf("the handler answered %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 100<<20))
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if timedOut {
			return resp.StatusCode, nil, fmt.Errorf("functionTimeout %s exceeded", timeout)
		}
		return resp.StatusCode, nil, fmt.Errorf("read the handler's answer: %w", err)
	}
	logs, err := parseResult(resp.Header.Get("Content-Type"), body)
	return resp.StatusCode, logs, err
}

// parseResult checks a 2xx answer the way the host reads it: JSON (and
// declared as application/json) with Outputs, Logs and ReturnValue (names
// case-insensitive). The real host hangs until functionTimeout on an empty
// or null body and tolerates absent keys; the emulator fails such an answer
// at once and demands all three keys, which this handler always sends.
func parseResult(contentType string, body []byte) ([]string, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return nil, fmt.Errorf("the answer's Content-Type is %q, not application/json", contentType)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return nil, errors.New("the answer has an empty or null body (the real host would wait until functionTimeout)")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &obj); err != nil {
		return nil, fmt.Errorf("the answer is not a JSON object: %w", err)
	}
	fields := map[string]json.RawMessage{}
	for k, v := range obj {
		fields[strings.ToLower(k)] = v
	}
	for _, k := range []string{"Outputs", "Logs", "ReturnValue"} {
		if _, ok := fields[strings.ToLower(k)]; !ok {
			return nil, fmt.Errorf("the answer has no %s", k)
		}
	}
	var logs []string
	if raw := fields["logs"]; len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &logs); err != nil {
			return nil, fmt.Errorf("the answer's Logs is not a list of strings: %w", err)
		}
	}
	var outputs map[string]json.RawMessage
	if raw := fields["outputs"]; len(raw) > 0 && string(raw) != "null" {
		if err := json.Unmarshal(raw, &outputs); err != nil {
			return logs, fmt.Errorf("the answer's Outputs is not an object: %w", err)
		}
	}
	return logs, nil
}

// BuildQueuePayload builds the body the host POSTs for a queue trigger
// (docs §1.4): Data[binding] is the message text JSON-serialised into a
// string and then encoded as a JSON string again; Metadata holds the
// delivery details (DequeueCount, Id and PopReceipt JSON-serialised into
// strings, the times as ISO strings), each top-level non-array property of a
// JSON-object message (scalars serialised into quoted strings, objects as
// they are, overwriting a metadata key of the same name) and sys.
func BuildQueuePayload(function, binding, text string, dm *azqueue.DequeuedMessage, now time.Time) ([]byte, error) {
	meta := map[string]any{
		"DequeueCount":    serialised(json.Number(strconv.FormatInt(deref(dm.DequeueCount), 10))),
		"Id":              serialised(deref(dm.MessageID)),
		"PopReceipt":      serialised(deref(dm.PopReceipt)),
		"InsertionTime":   isoTime(dm.InsertionTime),
		"ExpirationTime":  isoTime(dm.ExpirationTime),
		"NextVisibleTime": isoTime(dm.TimeNextVisible),
	}
	var obj map[string]json.RawMessage
	dec := json.NewDecoder(strings.NewReader(text))
	dec.UseNumber()
	if strings.HasPrefix(strings.TrimSpace(text), "{") && dec.Decode(&obj) == nil {
		for k, raw := range obj {
			if k == "sys" {
				continue
			}
			raw = bytes.TrimSpace(raw)
			switch {
			case len(raw) == 0 || raw[0] == '[' || string(raw) == "null":
				// arrays are not copied; a null has no value to bind
			case raw[0] == '{':
				meta[k] = raw
			case raw[0] == '"':
				var s string
				if err := json.Unmarshal(raw, &s); err != nil {
					return nil, err
				}
				meta[k] = serialised(s)
			default: // number or boolean: its text, as a string, serialised
				meta[k] = serialised(string(raw))
			}
		}
	}
	meta["sys"] = map[string]string{
		"MethodName": function,
		"UtcNow":     now.UTC().Format("2006-01-02T15:04:05.0000000Z"),
		"RandGuid":   NewUUID(),
	}
	payload := map[string]any{
		"Data":     map[string]any{binding: serialised(text)},
		"Metadata": meta,
	}
	return marshal(payload)
}

// serialised is v JSON-serialised into a string, the host's conversion for
// strings and integers (docs §1.4); the payload's encoding then encodes that
// string once more.
func serialised(v any) string {
	b, err := marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// marshal is json.Marshal without Go's HTML escaping of <, > and &, which
// the host's serializer does not do.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func isoTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05-07:00")
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
