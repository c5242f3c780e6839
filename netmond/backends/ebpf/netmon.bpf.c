// SPDX-License-Identifier: (MIT OR GPL-2.0)
/*
 * netmond's root mode: which process owns each socket, and UDP byte counters.
 *
 * Attached (by loader.py, as unpinned bpf_links) to the root of the cgroup v2
 * hierarchy, so every socket of the machine passes through these programs:
 *
 *   cgroup/sock_create   a TCP/UDP socket is created: record its creator
 *                        (tgid, uid, comm) under its socket cookie in `owners`,
 *                        and in its socket storage (`sk_owner`);
 *   cgroup/connect4/6    a socket connects: the connecting process becomes its
 *                        owner (a socket may have been passed on since creation);
 *   sockops              PASSIVE_ESTABLISHED: an accepted socket gets the owner
 *                        of its listener. The socket storage is cloned from the
 *                        listener (BPF_F_CLONE) when the kernel creates the
 *                        child; the current task here is whatever softirq runs,
 *                        so it must not be read;
 *   cgroup/sock_release  the socket's file is closed: its entries are flagged
 *                        RELEASED, so that user space reads them a last time
 *                        and deletes them;
 *   cgroup_skb/ingress,  UDP datagrams: payload bytes (IP and UDP headers
 *   cgroup_skb/egress    subtracted) and packets per socket cookie in
 *                        `udp_counts`. Every other packet returns at once.
 *
 * The socket cookie is the kernel's id of a socket (sock_diag's
 * idiag_cookie, SO_COOKIE), which is how user space joins these maps with
 * its netlink dumps. Only stable context structs are used: no kernel BTF.
 * Every program returns 1 (allow): netmond observes, it never filters.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define TASK_COMM_LEN 16

/* Entry flags. */
#define NM_RELEASED 1u

/* Capacity of the two maps user space reads (each entry < 130 bytes). */
#define MAX_OWNERS 65536
#define MAX_UDP 65536

/* Layouts mirrored by loader.py (OWNER / UDP_COUNTS structs). */
struct owner {
	__u32 tgid;
	__u32 uid;
	__u32 flags;
	__u32 pad;
	char comm[TASK_COMM_LEN];
};

struct udp_counts {
	__u64 bytes_sent;       /* payload: IP and UDP headers subtracted */
	__u64 bytes_received;
	__u64 packets_sent;     /* skbs: a GSO buffer counts once */
	__u64 packets_received;
	__u32 flags;
	__u32 family;           /* of the socket: AF_INET or AF_INET6 */
	__u32 local_ip[4];      /* network order; IPv4 in [0] */
	__u32 remote_ip[4];
	__u16 local_port;       /* host order */
	__u16 remote_port;      /* host order; 0: not connected */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_OWNERS);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_UDP);
	__type(key, __u64);
	__type(value, struct udp_counts);
} udp_counts SEC(".maps");

/* The owner travels with the socket: cloned into accepted children. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct owner);
} sk_owner SEC(".maps");

static __always_inline int tracked(__u32 family, __u32 protocol)
{
	return (family == AF_INET || family == AF_INET6) &&
	       (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP);
}

static __always_inline void current_owner(struct owner *o)
{
	o->tgid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->flags = 0;
	o->pad = 0;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline void remember(__u64 cookie, struct bpf_sock *sk, struct owner *o)
{
	struct owner *stored;

	bpf_map_update_elem(&owners, &cookie, o, BPF_ANY);
	stored = bpf_sk_storage_get(&sk_owner, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (stored)
		*stored = *o;
}

SEC("cgroup/sock_create")
int nm_sock_create(struct bpf_sock *sk)
{
	struct owner o = {};

	if (!tracked(sk->family, sk->protocol))
		return 1;
	current_owner(&o);
	remember(bpf_get_socket_cookie(sk), sk, &o);
	return 1;
}

static __always_inline int on_connect(struct bpf_sock_addr *ctx)
{
	struct owner o = {};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || !tracked(ctx->user_family, ctx->protocol))
		return 1;
	current_owner(&o);
	remember(bpf_get_socket_cookie(ctx), sk, &o);
	return 1;
}

SEC("cgroup/connect4")
int nm_connect4(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx);
}

SEC("cgroup/connect6")
int nm_connect6(struct bpf_sock_addr *ctx)
{
	return on_connect(ctx);
}

SEC("sockops")
int nm_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk;
	struct owner *listener;
	struct owner o;
	__u64 cookie;

	if (skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	sk = skops->sk;
	if (!sk)
		return 1;
	listener = bpf_sk_storage_get(&sk_owner, sk, 0, 0);
	if (!listener)
		return 1; /* a listener older than the daemon: /proc tells */
	o = *listener;
	o.flags = 0;
	cookie = bpf_get_socket_cookie(skops);
	bpf_map_update_elem(&owners, &cookie, &o, BPF_ANY);
	return 1;
}

SEC("cgroup/sock_release")
int nm_sock_release(struct bpf_sock *sk)
{
	__u64 cookie;
	struct owner *o;
	struct udp_counts *c;

	if (!tracked(sk->family, sk->protocol))
		return 1;
	cookie = bpf_get_socket_cookie(sk);
	o = bpf_map_lookup_elem(&owners, &cookie);
	if (o)
		o->flags = NM_RELEASED;
	c = bpf_map_lookup_elem(&udp_counts, &cookie);
	if (c)
		c->flags = NM_RELEASED;
	return 1;
}

static __always_inline int count_udp(struct __sk_buff *skb, int egress)
{
	struct bpf_sock *sk = skb->sk;
	struct udp_counts *c;
	__u64 cookie, payload;
	__u32 headers;
	__u8 first;

	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->protocol != IPPROTO_UDP)
		return 1;
	/* cgroup_skb data starts at the IP header, for both directions. */
	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		return 1;
	/* IPv6 extension headers, rare on UDP, are counted as payload. */
	headers = (first >> 4) == 4 ? (first & 0x0f) * 4 + 8 : 40 + 8;
	payload = skb->len > headers ? skb->len - headers : 0;

	cookie = bpf_get_socket_cookie(skb);
	c = bpf_map_lookup_elem(&udp_counts, &cookie);
	if (!c) {
		struct udp_counts fresh = {};

		fresh.family = sk->family;
		fresh.local_port = sk->src_port;
		fresh.remote_port = bpf_ntohs(sk->dst_port);
		if (sk->family == AF_INET6) {
			fresh.local_ip[0] = sk->src_ip6[0];
			fresh.local_ip[1] = sk->src_ip6[1];
			fresh.local_ip[2] = sk->src_ip6[2];
			fresh.local_ip[3] = sk->src_ip6[3];
			fresh.remote_ip[0] = sk->dst_ip6[0];
			fresh.remote_ip[1] = sk->dst_ip6[1];
			fresh.remote_ip[2] = sk->dst_ip6[2];
			fresh.remote_ip[3] = sk->dst_ip6[3];
		} else {
			fresh.local_ip[0] = sk->src_ip4;
			fresh.remote_ip[0] = sk->dst_ip4;
		}
		bpf_map_update_elem(&udp_counts, &cookie, &fresh, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&udp_counts, &cookie);
		if (!c)
			return 1;
	}
	if (egress) {
		__sync_fetch_and_add(&c->bytes_sent, payload);
		__sync_fetch_and_add(&c->packets_sent, 1);
	} else {
		__sync_fetch_and_add(&c->bytes_received, payload);
		__sync_fetch_and_add(&c->packets_received, 1);
	}
	return 1;
}

SEC("cgroup_skb/ingress")
int nm_skb_ingress(struct __sk_buff *skb)
{
	return count_udp(skb, 0);
}

SEC("cgroup_skb/egress")
int nm_skb_egress(struct __sk_buff *skb)
{
	return count_udp(skb, 1);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
