/** What the client processes of the fan-out benchmarks report, merged over every process. */

/** One client process's report: per broadcast id, its latest delivery's latency (ms) and its deliveries. */
export type DeliveryReport = { ids: Array<[number, number, number]> }

/** Per broadcast id over every report: the latest delivery's latency (ms) and the deliveries. */
export function mergeDeliveries (reports: readonly DeliveryReport[]): Map<number, { latency: number, deliveries: number }> {
  const byId = new Map<number, { latency: number, deliveries: number }>()
  for (const { ids } of reports) {
    for (const [id, latency, deliveries] of ids) {
      const entry = byId.get(id) ?? { latency: 0, deliveries: 0 }
      entry.latency = Math.max(entry.latency, latency)
      entry.deliveries += deliveries
      byId.set(id, entry)
    }
  }
  return byId
}
