/* The process-wide counters (stats.h). */
#include "stats.h"

struct stats stats;

const struct stats_field stats_fields[] = {
#define STATS_ENTRY(name, help) { #name, help, offsetof(struct stats, name) },
    STATS_FIELDS(STATS_ENTRY)
#undef STATS_ENTRY
    { NULL, NULL, 0 },
};
