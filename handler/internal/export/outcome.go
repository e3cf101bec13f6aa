package export

// Action is what the queue must do with a delivered work item message.
type Action int

const (
	// Settle deletes the message: nothing more will come of it. The work is
	// done, handed on to a continuation message, failed for good and
	// recorded on the job, or the message was a duplicate or stale.
	Settle Action = iota
	// Retry makes the message visible again after the queue's retry delay;
	// the next delivery resumes at the item's last checkpoint.
	Retry
	// Poison moves the message to the poison queue: its last delivery
	// failed. The failure is recorded on the job (unless storage refused even
	// that; the engine logs it), and the message is kept for operators.
	Poison
)

// Outcome is what became of one delivery of a work item message. Process
// returns it so that the queue adapters (funchost, queueworker) act on an
// explicit decision instead of interpreting an error's kind, in the manner of
// river's JobSnooze and JobCancel.
type Outcome struct {
	Action Action
	// Cause is why the work did not finish (Retry, Poison), or the failure
	// recorded on the job (Settle after a permanent failure); nil when the
	// message was simply finished with. It is for the service's own log, not
	// for the Functions host, whose logs are kept outside our control.
	Cause error
}

// Done settles a message whose work is finished with.
func Done() Outcome { return Outcome{Action: Settle} }

// GiveUp settles a message whose work failed for good: the failure is
// recorded on the job, and delivering the message again could not help.
func GiveUp(cause error) Outcome { return Outcome{Action: Settle, Cause: cause} }

// RetryLater asks for the message again after the queue's retry delay.
func RetryLater(cause error) Outcome { return Outcome{Action: Retry, Cause: cause} }

// Poisoned sends the message of a failed last delivery to the poison queue.
func Poisoned(cause error) Outcome { return Outcome{Action: Poison, Cause: cause} }

// String describes the outcome without the cause's text, for logs that
// leave the service (the Functions host's invocation logs).
func (o Outcome) String() string {
	switch {
	case o.Action == Retry:
		return "to be delivered again"
	case o.Action == Poison:
		return "failed on its last delivery; the message goes to the poison queue"
	case o.Cause != nil:
		return "failed; the failure is recorded on the job"
	default:
		return "done"
	}
}
