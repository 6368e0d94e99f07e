/* nova.c - FedNova step counts and tau_eff (nova.h). */
#include "server/nova.h"

uint32_t
srv_nova_full_steps(uint32_t n, uint32_t epochs, uint32_t batch)
{
	if (batch == 0)
		return 0;
	uint64_t s = (uint64_t)epochs * (((uint64_t)n + batch - 1) / batch);
	return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

uint32_t
srv_nova_ref_steps(uint64_t n_sum, uint32_t k, uint32_t epochs, uint32_t batch)
{
	if (k == 0 || batch == 0)
		return 1;
	uint64_t per = (uint64_t)k * batch;
	uint64_t s = (uint64_t)epochs * ((n_sum + per - 1) / per);
	return s == 0 ? 1 : s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}
