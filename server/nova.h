/* nova.h - the arithmetic of time-budgeted local work with FedNova
 * normalization (Wang et al. 2020, "Tackling the Objective Inconsistency
 * Problem in Heterogeneous Federated Optimization"; PROTOCOL.md section 17).
 *
 * With a local time budget client i does tau_i <= E * ceil(n_i / B) local
 * SGD steps and sends u_i = d_i * S / tau_i (d_i: its model delta; S: the
 * reference step count of the round, srv_nova_ref_steps). The server
 * averages the u_i with weights p_i as FedAvg does and multiplies the
 * average by tau_eff / S, with tau_eff = sum_i p_i tau_i over the updates
 * in the sum, which gives FedNova's
 *
 *   Delta = tau_eff * sum_i p_i d_i / tau_i.
 *
 * Pure functions: no state, no I/O. */
#ifndef SHOAL_SERVER_NOVA_H
#define SHOAL_SERVER_NOVA_H

#include <stddef.h>
#include <stdint.h>

/* Local SGD steps of the full work: E * ceil(n / B) (UINT32_MAX if it
 * does not fit; 0 when B is 0). */
uint32_t srv_nova_full_steps(uint32_t n, uint32_t epochs, uint32_t batch);

/* S of a round: the full-work steps of the mean local data size of the k
 * selected clients, E * ceil(n_sum / (k B)) with n_sum their examples (as
 * announced in HELLO), at least 1. Any S > 0 that the clients of a sum
 * share gives the same Delta; this one keeps u_i the size of a full-work
 * delta, which the quantizer and the DP clip expect. */
uint32_t srv_nova_ref_steps(uint64_t n_sum, uint32_t k, uint32_t epochs, uint32_t batch);

#endif
