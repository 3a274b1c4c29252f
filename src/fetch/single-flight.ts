/** Runs one task per key at a time; callers that ask while it runs share its result. */
export class SingleFlight<K, V> {
  private readonly running = new Map<K, Promise<V>>();

  run(key: K, task: () => Promise<V>): Promise<V> {
    const current = this.running.get(key);
    if (current) return current;
    const promise = task().finally(() => this.running.delete(key));
    this.running.set(key, promise);
    return promise;
  }

  get size(): number {
    return this.running.size;
  }

  has(key: K): boolean {
    return this.running.has(key);
  }
}
