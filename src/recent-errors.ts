/** The last few things that went wrong, for the status page (the logs hold them all). */
export interface RecentError {
  time: string;
  message: string;
  digest?: string;
}

export class RecentErrors {
  private readonly entries: RecentError[] = [];

  constructor(private readonly capacity = 20) {}

  add(message: string, digest?: string): void {
    this.entries.push({ time: new Date().toISOString(), message: message.slice(0, 500), ...(digest && { digest }) });
    if (this.entries.length > this.capacity) this.entries.shift();
  }

  list(): RecentError[] {
    return [...this.entries].reverse();
  }
}
