/* err.c - names for shoal_err values (see include/shoal/err.h). */
#include "shoal/err.h"

const char *
shoal_strerror(shoal_err err)
{
	switch (err) {
	case SHOAL_OK: return "ok";
	case SHOAL_ENOMEM: return "out of memory";
	case SHOAL_EINVAL: return "invalid argument";
	case SHOAL_EIO: return "I/O error";
	case SHOAL_EFORMAT: return "bad file format";
	case SHOAL_ETRUNC: return "truncated input";
	case SHOAL_EMALFORMED: return "malformed message";
	case SHOAL_EVERSION: return "unsupported protocol version";
	case SHOAL_ETYPE: return "unknown message type";
	case SHOAL_ETOOBIG: return "size limit exceeded";
	case SHOAL_ESTALE: return "stale or unknown round";
	case SHOAL_EUNKNOWN: return "unknown client";
	case SHOAL_EDIM: return "wrong model dimension";
	case SHOAL_ENONFINITE: return "NaN or Inf in data";
	case SHOAL_EDUP: return "duplicate submission";
	case SHOAL_ESTATE: return "message not valid in this state";
	case SHOAL_ENOTSELECTED: return "client not selected for this round";
	case SHOAL_ETRANSPORT: return "transport error";
	case SHOAL_ETIMEDOUT: return "timed out";
	case SHOAL_ECLOSED: return "closed";
	case SHOAL_EMODEL: return "unsupported model";
	case SHOAL_EFULL: return "server full";
	case SHOAL_EABORTED: return "secure aggregation round aborted";
	case SHOAL_ECRYPTO: return "decryption or signature check failed";
	case SHOAL_ECAPS: return "client lacks a required capability";
	case SHOAL_ERATE: return "too many requests: rate limit";
	case SHOAL_EUNLISTED: return "client key not admitted";
	case SHOAL_EBADSIG: return "bad or missing signature";
	case SHOAL_ENONCE: return "missing, stale or replayed nonce";
	case SHOAL_ETOKEN: return "enrollment token unknown or already used";
	case SHOAL_EIDENTITY: return "client name and key do not match the registry";
	}
	return "unknown error";
}
