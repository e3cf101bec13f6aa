//go:build race

package fhirsource

// raceEnabled loosens allocation bounds: the race detector allocates too.
const raceEnabled = true
