/* The table of stream connections (src/conn.c): every live one by id (conn_get), by transport
 * and remote address for reuse (conn_find, RFC 3261 §18.1.1) and by remote IP (conn_count_ip,
 * the max_connections_per_ip limit of SPEC §3.1), in chained hash tables with a random seed. */
#include "conn_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ----- hash tables: chained, power-of-two buckets, the hash kept in each node ----- */

struct htab {
    struct hnode **b;
    size_t mask, n;
};

static uint64_t hash_seed;

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = hash_seed ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = mix64(h ^ w);
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    return mix64(h ^ w ^ 0x9e3779b97f4a7c15ULL);
}

/* Doubles the bucket array; on allocation failure keeps the old one (longer chains). */
static void htab_grow(struct htab *t)
{
    size_t nb = t->b ? (t->mask + 1) * 2 : 64;
    struct hnode **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    if (t->b) {
        for (size_t i = 0; i <= t->mask; i++) {
            struct hnode *n = t->b[i];
            while (n) {
                struct hnode *next = n->next;
                n->next = b[n->h & (nb - 1)];
                b[n->h & (nb - 1)] = n;
                n = next;
            }
        }
        free(t->b);
    }
    t->b = b;
    t->mask = nb - 1;
}

static int htab_insert(struct htab *t, struct hnode *n, uint64_t h)
{
    if (!t->b || t->n > t->mask)
        htab_grow(t);
    if (!t->b)
        return -ENOMEM;
    n->h = h;
    n->next = t->b[h & t->mask];
    t->b[h & t->mask] = n;
    t->n++;
    return 0;
}

static void htab_remove(struct htab *t, struct hnode *n)
{
    if (!t->b)
        return;
    struct hnode **pp = &t->b[n->h & t->mask];
    while (*pp && *pp != n)
        pp = &(*pp)->next;
    if (*pp) {
        *pp = n->next;
        t->n--;
    }
}

static struct hnode *htab_first(const struct htab *t, uint64_t h)
{
    return t->b ? t->b[h & t->mask] : NULL;
}

static void htab_free(struct htab *t)
{
    free(t->b);
    memset(t, 0, sizeof(*t));
}

static int addr_key_of(const struct sockaddr *sa, socklen_t len, int tp, int with_port, struct addr_key *k)
{
    memset(k, 0, sizeof(*k));
    k->tp = (uint8_t)tp;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        k->family = 4;
        memcpy(k->ip, &s4->sin_addr, 4);
        k->port = with_port ? s4->sin_port : 0;
        return 0;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        k->family = 6;
        memcpy(k->ip, &s6->sin6_addr, 16);
        k->port = with_port ? s6->sin6_port : 0;
        return 0;
    }
    return -1;
}

/* ----- state ----- */

static struct htab by_id, by_addr, by_ip;
struct conn *all_head;
size_t nconns;

void init_seed(void)
{
    if (hash_seed)
        return;
    if (getrandom(&hash_seed, sizeof(hash_seed), GRND_NONBLOCK) != (ssize_t)sizeof(hash_seed))
        hash_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    hash_seed |= 1;
}

struct ip_entry *ip_find(const struct addr_key *k, uint64_t h)
{
    for (struct hnode *n = htab_first(&by_ip, h); n; n = n->next) {
        struct ip_entry *e = container_of(n, struct ip_entry, node);
        if (n->h == h && memcmp(&e->key, k, sizeof(*k)) == 0)
            return e;
    }
    return NULL;
}

void ip_key_of(const struct sockaddr *sa, socklen_t len, struct addr_key *k, uint64_t *h)
{
    if (addr_key_of(sa, len, 0, 0, k) != 0)
        memset(k, 0, sizeof(*k));
    *h = hash_bytes(k, sizeof(*k));
}

/* Enters c in the tables. Returns 0 or -ENOMEM. */
int table_add(struct conn *c)
{
    struct conn_priv *p = c->priv;
    struct addr_key ik;
    uint64_t ih;
    ip_key_of((struct sockaddr *)&c->remote, c->remote_len, &ik, &ih);
    struct ip_entry *e = ip_find(&ik, ih);
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e)
            return -ENOMEM;
        e->key = ik;
        if (htab_insert(&by_ip, &e->node, ih) != 0) {
            free(e);
            return -ENOMEM;
        }
    }
    if (htab_insert(&by_id, &p->id_node, mix64(c->id ^ hash_seed)) != 0)
        goto fail;
    if (addr_key_of((struct sockaddr *)&c->remote, c->remote_len, c->transport, 1, &p->akey) != 0 ||
        htab_insert(&by_addr, &p->addr_node, hash_bytes(&p->akey, sizeof(p->akey))) != 0) {
        htab_remove(&by_id, &p->id_node);
        goto fail;
    }
    e->n++;
    if (!c->outgoing)
        e->n_in++;
    p->ip = e;
    p->next = all_head;
    if (all_head)
        all_head->priv->prev = c;
    all_head = c;
    nconns++;
    return 0;
fail:
    if (e->n == 0) {
        htab_remove(&by_ip, &e->node);
        free(e);
    }
    return -ENOMEM;
}

void table_remove(struct conn *c)
{
    struct conn_priv *p = c->priv;
    htab_remove(&by_id, &p->id_node);
    htab_remove(&by_addr, &p->addr_node);
    struct ip_entry *e = p->ip;
    if (e) {
        e->n--;
        if (!c->outgoing)
            e->n_in--;
        if (e->n == 0) {
            htab_remove(&by_ip, &e->node);
            free(e);
        }
        p->ip = NULL;
    }
    if (p->prev)
        p->prev->priv->next = p->next;
    else
        all_head = p->next;
    if (p->next)
        p->next->priv->prev = p->prev;
    p->prev = p->next = NULL;
    nconns--;
}

/* Frees the buckets of the three tables (conn_shutdown_now, the table empty by then). */
void table_free(void)
{
    htab_free(&by_id);
    htab_free(&by_addr);
    htab_free(&by_ip);
}

/* ----- lookups ----- */

struct conn *conn_get(uint64_t id)
{
    uint64_t h = mix64(id ^ hash_seed);
    for (struct hnode *n = htab_first(&by_id, h); n; n = n->next) {
        struct conn_priv *p = container_of(n, struct conn_priv, id_node);
        if (n->h == h && p->pub->id == id)
            return p->pub->state == CONN_CLOSED ? NULL : p->pub;
    }
    return NULL;
}

struct conn *conn_find(enum sip_transport tp, const struct sockaddr *dst, socklen_t dstlen)
{
    struct addr_key k;
    if (addr_key_of(dst, dstlen, tp, 1, &k) != 0)
        return NULL;
    uint64_t h = hash_bytes(&k, sizeof(k));
    struct conn *best = NULL;
    for (struct hnode *n = htab_first(&by_addr, h); n; n = n->next) {
        struct conn_priv *p = container_of(n, struct conn_priv, addr_node);
        struct conn *c = p->pub;
        if (n->h != h || memcmp(&p->akey, &k, sizeof(k)) != 0)
            continue;
        if (c->state == CONN_CLOSING || c->state == CONN_CLOSED)
            continue;
        if (!c->outgoing && c->state != CONN_OPEN)
            continue; /* an accepted one carries SIP only once open */
        if (!best || p->last_used > best->priv->last_used ||
            (p->last_used == best->priv->last_used && c->id > best->id))
            best = c;
    }
    return best;
}

size_t conn_count(void)
{
    return nconns;
}

size_t conn_count_ip(const struct sockaddr *addr)
{
    struct addr_key k;
    uint64_t h;
    socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    ip_key_of(addr, len, &k, &h);
    struct ip_entry *e = ip_find(&k, h);
    return e ? e->n : 0;
}

void conn_foreach(void (*fn)(struct conn *c, void *arg), void *arg)
{
    for (struct conn *c = all_head, *next; c; c = next) {
        next = c->priv->next;
        fn(c, arg);
    }
}
