// botyard's MongoDB users, created or updated by docker-compose.yml's mongo-users
// one-shot on every `docker compose up`, so that a password changed in .env applies.
// Both live in the admin database (authSource=admin in the URIs) and may use the
// botyard database only: the application reads and writes its collections, the
// migrations may also build and drop indexes there (dbAdmin). Passwords come from
// the environment and are never printed.
const env = process.env;
const admin = db.getSiblingDB('admin');
admin.auth(env.MONGO_ROOT_USERNAME, env.MONGO_ROOT_PASSWORD);

const database = env.BOTYARD_DATABASE;
const users = [
  {
    user: env.MONGO_APP_USERNAME,
    pwd: env.MONGO_APP_PASSWORD,
    roles: [{role: 'readWrite', db: database}],
  },
  {
    user: env.MONGO_MIGRATE_USERNAME,
    pwd: env.MONGO_MIGRATE_PASSWORD,
    roles: [{role: 'readWrite', db: database}, {role: 'dbAdmin', db: database}],
  },
];
for (const {user, pwd, roles} of users) {
  if (admin.getUser(user) === null) {
    admin.createUser({user, pwd, roles});
    print(`created MongoDB user ${user}`);
  } else {
    admin.updateUser(user, {pwd, roles});
    print(`updated MongoDB user ${user}`);
  }
}
