import { pino, type Logger } from 'pino';
import type { LogLevel } from './config/schema.js';

/** Structured JSON logs on stderr, so stdout stays free for command output. */
export function createLogger(level: LogLevel): Logger {
  return pino({ level, base: { svc: 'shoal' } }, pino.destination(2));
}
