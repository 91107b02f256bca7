/* The process-wide counters (stats.h). */
#include "stats.h"

struct stats stats;
