import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ConfigMap, Namespace, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { parseConfig } from '../../src/config/load.js';
import { parseHostPort } from '../../src/config/schema.js';
import { parseRegistryPath } from '../../src/http/registry-path.js';
import { Metrics } from '../../src/metrics.js';

const dir = 'deploy/kubernetes';
type Doc = { apiVersion: string; kind: string; metadata: { name: string }; [key: string]: unknown };

const files = readdirSync(dir).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
const docs: Doc[] = files.flatMap((f) =>
  parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => {
    expect(d.errors).toEqual([]);
    return d.toJSON() as Doc;
  }),
);
const byKind = (kind: string) => docs.find((d) => d.kind === kind)!;

// Validated against the Kubernetes (and Prometheus Operator) OpenAPI schemas that the
// kubernetes-models packages are generated from.
const models: Record<string, new (data: never) => { validate(): void }> = {
  Namespace,
  ServiceAccount,
  ConfigMap,
  Secret,
  Service,
  DaemonSet,
  NetworkPolicy,
  ServiceMonitor,
};

describe('deploy/kubernetes', () => {
  it('lists every manifest in the kustomization', () => {
    const kustomization = parseAllDocuments(readFileSync(join(dir, 'kustomization.yaml'), 'utf8'))[0]!.toJSON() as { resources: string[] };
    expect([...kustomization.resources].sort()).toEqual([...files].sort());
  });

  it.each(files)('%s validates against the Kubernetes schemas', (file) => {
    const own = parseAllDocuments(readFileSync(join(dir, file), 'utf8')).map((d) => d.toJSON() as Doc);
    for (const doc of own) {
      const Model = models[doc.kind];
      expect(Model, `a model for ${doc.kind}`).toBeDefined();
      expect(() => new Model!(doc as never).validate()).not.toThrow();
    }
  });

  it('ships a config that shoal agent accepts, matching the DaemonSet and Service', () => {
    const configMap = byKind('ConfigMap') as unknown as { data: Record<string, string> };
    const config = parseConfig(JSON.parse(configMap.data['agent.config.json']!));
    const httpPort = parseHostPort(config.registry.listen)!.port;
    const p2pPort = Number(/\/tcp\/(\d+)/.exec(config.p2p.listen[0]!)![1]);

    const ds = byKind('DaemonSet') as unknown as {
      spec: { template: { spec: { containers: Container[]; initContainers: Container[] } } };
    };
    type Container = {
      args: string[];
      ports?: { name: string; containerPort: number; hostPort?: number }[];
      readinessProbe?: { httpGet: { path: string } };
      livenessProbe?: { httpGet: { path: string } };
      volumeMounts: { mountPath: string; subPath?: string }[];
    };
    const agent = ds.spec.template.spec.containers[0]!;
    const init = ds.spec.template.spec.initContainers[0]!;
    const configPath = '/etc/shoal/agent.config.json';
    expect(agent.args).toEqual(['agent', `--config=${configPath}`]);
    expect(agent.volumeMounts).toContainEqual(expect.objectContaining({ mountPath: configPath, subPath: 'agent.config.json' }));
    expect(agent.ports).toContainEqual({ name: 'http', containerPort: httpPort, hostPort: httpPort, protocol: 'TCP' });
    expect(agent.ports).toContainEqual({ name: 'p2p', containerPort: p2pPort, protocol: 'TCP' });
    expect(agent.readinessProbe!.httpGet.path).toBe('/readyz');
    expect(agent.livenessProbe!.httpGet.path).toBe('/healthz');
    expect(init.args[0]).toBe('containerd-config');
    expect(init.args).toContain(`--config=${configPath}`);
    expect(init.args).toContain(`--mirror=http://$(NODE_IP):${httpPort}`);

    const service = byKind('Service') as unknown as { metadata: { name: string; namespace?: string }; spec: { ports: { name: string; port: number }[] } };
    expect(service.spec.ports).toContainEqual(expect.objectContaining({ name: 'p2p', port: p2pPort }));
    // Agents bootstrap from the headless Service's DNS name, in the kustomization's namespace.
    expect(config.p2p.bootstrap).toEqual([`${service.metadata.name}.shoal.svc.cluster.local:${p2pPort}`]);
    expect(config.p2p.pskFile).toBe('/etc/shoal/secrets/swarm.key');
  });
});

describe('deploy/dashboards/shoal.json', () => {
  it('charts only metrics the agent exports', async () => {
    const dashboard = JSON.parse(readFileSync('deploy/dashboards/shoal.json', 'utf8')) as { panels: { targets: { expr: string }[] }[] };
    const exported = await new Metrics().text();
    const names = new Set([...exported.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
    for (const panel of dashboard.panels) {
      for (const { expr } of panel.targets) {
        for (const [name] of expr.matchAll(/shoal_[a-z_]+/g)) {
          expect(names.has(name.replace(/_(bucket|sum|count)$/, '')), name).toBe(true);
        }
      }
    }
  });
});

describe('deploy/runtimes', () => {
  const upstreams = { has: (h: string) => ['docker.io', 'ghcr.io'].includes(h), defaultRegistry: 'docker.io' };

  it('CRI-O mirrors name the registry as the first path segment, which the agent maps to it', () => {
    const conf = readFileSync('deploy/runtimes/crio-registries.conf', 'utf8');
    const locations = [...conf.matchAll(/location = "127\.0\.0\.1:30020\/([^"]+)"/g)].map((m) => m[1]!);
    expect(locations).toEqual(['docker.io', 'ghcr.io']);
    for (const registry of locations) {
      const target = parseRegistryPath(`/v2/${registry}/team/app/manifests/v1`, upstreams);
      expect(target).toMatchObject({ kind: 'manifest', registry, repository: 'team/app' });
    }
  });

  it('Docker mirrors send plain paths, which go to upstreams.default (docker.io)', () => {
    const conf = JSON.parse(readFileSync('deploy/runtimes/docker-daemon.json', 'utf8')) as { 'registry-mirrors': string[] };
    expect(conf['registry-mirrors']).toEqual(['http://127.0.0.1:30020']);
    expect(parseRegistryPath('/v2/library/nginx/manifests/latest', upstreams)).toMatchObject({ registry: 'docker.io', repository: 'library/nginx' });
    expect(parseRegistryPath('/v2/nginx/manifests/latest', upstreams)).toMatchObject({ registry: 'docker.io', repository: 'library/nginx' });
  });
});

describe('deploy/Dockerfile and deploy/systemd', () => {
  // No Docker engine runs here, so the image is not built in the tests; its shape is checked.
  it('builds in stages and runs the agent as a non-root user', () => {
    const dockerfile = readFileSync('deploy/Dockerfile', 'utf8');
    expect(dockerfile.match(/^FROM /gm)?.length).toBeGreaterThanOrEqual(2);
    expect(dockerfile).toMatch(/^COPY --from=build /m);
    const user = /^USER (\S+)/m.exec(dockerfile)?.[1];
    expect(user).toBeDefined();
    expect(user).not.toMatch(/^(0|root)$/);
    expect(dockerfile).toMatch(/^CMD \["agent", "--config", "\/etc\/shoal\/agent\.config\.json"\]/m);
  });

  it('runs the agent with its config file under systemd', () => {
    const unit = readFileSync('deploy/systemd/shoal.service', 'utf8');
    expect(unit).toMatch(/^ExecStart=.*dist\/cli\.js agent --config \/etc\/shoal\/agent\.config\.json$/m);
    expect(unit).toMatch(/^User=shoal$/m);
    expect(unit).toMatch(/^KillSignal=SIGTERM$/m);
  });
});
