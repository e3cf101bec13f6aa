//go:build !race

package fhirsource

const raceEnabled = false
