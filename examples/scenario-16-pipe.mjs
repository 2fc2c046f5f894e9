// Scenario 16: a duplex pipe; the child sends 'Hello from child', the parent
// sends 'Hello from parent', and each side receives the other's message.
import { Pipe, Process, isMainProcess } from 'posix-multiprocessing';

export async function child(conn) {
  conn.send('Hello from child');
  console.log(`child received: ${await conn.recv()}`);
  conn.close();
}

if (isMainProcess()) {
  const [parentConn, childConn] = Pipe();
  const p = new Process({ target: child, args: [childConn] });
  p.start();
  childConn.close(); // the child has its own copy
  parentConn.send('Hello from parent');
  console.log(`parent received: ${await parentConn.recv()}`);
  await p.join();
  parentConn.close();
}
