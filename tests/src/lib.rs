//! Test support: mosquitto on random loopback ports, pseudo-terminals, TLS material.
